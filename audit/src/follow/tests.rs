//! Following a file: history, filters, appended lines, partial lines, rotation.

use std::io::Write;

use super::*;
use crate::chain::Chain;
use crate::event::{Action, AuditEvent, Category};

fn line(chain: &mut Chain, category: Category, container: &str, ns: i64) -> Vec<u8> {
    let mut ev = AuditEvent {
        action: Action::Open,
        category,
        container_id: Some(container.to_owned()),
        time: Timestamp::from_unix_nanos(ns),
        ..AuditEvent::default()
    };
    chain.seal(&mut ev).unwrap_or_default()
}

fn history(path: &Path, filter: FollowFilter) -> Vec<String> {
    let opts = FollowOptions {
        follow: false,
        ..FollowOptions::default()
    };
    follow_with(path, filter, opts)
        .map(|f| f.filter_map(Result::ok).collect())
        .unwrap_or_default()
}

#[test]
fn filters_history() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("a.jsonl");
    let mut a = Chain::new("a");
    let mut b = Chain::new("b");
    let mut data = Vec::new();
    for i in 0..10 {
        let cat = if i % 2 == 0 {
            Category::File
        } else {
            Category::Process
        };
        data.extend(line(&mut a, cat, "c1", i * 10));
        data.extend(line(&mut b, Category::Network, "c2", i * 10 + 5));
    }
    data.extend_from_slice(b"garbage\n");
    std::fs::write(&path, &data).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(history(&path, FollowFilter::default()).len(), 20);
    let f = |since, container: Option<&str>, category: Option<&str>| FollowFilter {
        since,
        container: container.map(str::to_owned),
        category: category.map(str::to_owned),
        sandbox: None,
    };
    assert_eq!(history(&path, f(Some(Since::Seq(9)), None, None)).len(), 4);
    assert_eq!(history(&path, f(None, Some("c2"), None)).len(), 10);
    assert_eq!(history(&path, f(None, None, Some("file"))).len(), 5);
    let t = Since::parse("1970-01-01T00:00:00.000000050Z");
    assert_eq!(history(&path, f(t, Some("c1"), None)).len(), 5);
    assert_eq!(Since::parse("12"), Some(Since::Seq(12)));
    assert_eq!(Since::parse("soon"), None);
    let opts = FollowOptions {
        follow: false,
        ..FollowOptions::default()
    };
    let errors =
        follow_with(&path, FollowFilter::default(), opts).map(|f| f.filter(Result::is_err).count());
    assert_eq!(errors.ok(), Some(1));
}

#[test]
fn follows_appends_partial_lines_and_truncation() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("a.jsonl");
    let mut chain = Chain::new("a");
    std::fs::write(&path, line(&mut chain, Category::File, "c", 1))
        .unwrap_or_else(|e| panic!("{e}"));
    let opts = FollowOptions {
        follow: true,
        poll_interval: Duration::from_millis(10),
    };
    let mut follow =
        follow_with(&path, FollowFilter::default(), opts).unwrap_or_else(|e| panic!("{e}"));
    let stop = follow.stop_handle();
    assert!(follow.next().is_some_and(|l| l.is_ok()));
    let second = line(&mut chain, Category::File, "c", 2);
    let third = line(&mut chain, Category::File, "c", 3);
    let p = path.clone();
    let writer = std::thread::spawn(move || {
        let mut f = crate::writer::open_append(&p).unwrap_or_else(|e| panic!("{e}"));
        let (head, tail) = second.split_at(20);
        let _ = f.write_all(head);
        std::thread::sleep(Duration::from_millis(50));
        let _ = f.write_all(tail);
        std::thread::sleep(Duration::from_millis(50));
        // Rotation: the file is truncated and starts over.
        let _ = std::fs::write(&p, &third);
    });
    let got = follow.next().and_then(Result::ok).unwrap_or_default();
    assert!(got.contains("\"seq\":2"), "{got}");
    let got = follow.next().and_then(Result::ok).unwrap_or_default();
    assert!(got.contains("\"seq\":3"), "{got}");
    let _ = writer.join();
    stop.store(true, Ordering::Release);
    assert!(follow.next().is_none());
}

#[test]
fn seal_records_are_skipped_not_errors() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("a.jsonl");
    let mut a = Chain::new("a");
    let mut data = line(&mut a, Category::File, "c", 1);
    data.extend_from_slice(
        b"{\"seal\":{\"epoch\":0,\"kind\":\"checkpoint\",\"prev\":\"00\",\"seq\":1,\"time\":\"2026-01-01T00:00:00.000000000Z\"},\"sig\":\"00\"}\n",
    );
    data.extend_from_slice(&line(&mut a, Category::File, "c", 2));
    std::fs::write(&path, &data).unwrap_or_else(|e| panic!("{e}"));
    let opts = FollowOptions {
        follow: false,
        ..FollowOptions::default()
    };
    let got: Vec<_> = follow_with(&path, FollowFilter::default(), opts)
        .map(|f| f.collect())
        .unwrap_or_default();
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got.iter().all(Result::is_ok), "{got:?}");
}
