//! Unit tests of the query checks and the rebuilt query and answer.

use super::*;
use hickory_proto::rr::rdata::opt::{EdnsCode, EdnsOption};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, NULL, TXT};

fn name(s: &str) -> Name {
    Name::from_ascii(s).expect("name")
}

fn query(names: &[(&str, RecordType)]) -> Message {
    let mut m = Message::new();
    m.set_id(4242).set_recursion_desired(true);
    for (n, t) in names {
        m.add_query(Query::query(name(n), *t));
    }
    m
}

/// The query as the forwarder receives it: serialized and parsed again.
fn wire(m: &Message) -> Message {
    Message::from_vec(&m.to_vec().expect("bytes")).expect("parses")
}

fn refused_because(m: &Message, needle: &str) {
    match check_query(&wire(m)) {
        Err(r) => assert!(r.why.contains(needle), "{r:?} should say {needle:?}"),
        Ok(q) => panic!("{q:?} should be refused ({needle})"),
    }
}

#[test]
fn one_address_question_passes() {
    let q = check_query(&wire(&query(&[("API.Test.", RecordType::AAAA)]))).expect("ok");
    assert_eq!(
        q,
        Question {
            name: "api.test".into(),
            qtype: RecordType::AAAA,
            edns_payload: None
        }
    );
    let mut with_edns = query(&[("api.test.", RecordType::A)]);
    let mut edns = Edns::new();
    edns.set_max_payload(4096);
    with_edns.set_edns(edns);
    let q = check_query(&wire(&with_edns)).expect("ok");
    assert_eq!(q.edns_payload, Some(4096));
}

#[test]
fn anything_but_one_address_question_is_refused() {
    refused_because(
        &query(&[
            ("api.test.", RecordType::A),
            ("secret.evil.test.", RecordType::A),
        ]),
        "2 questions",
    );
    for t in [
        RecordType::TXT,
        RecordType::NULL,
        RecordType::ANY,
        RecordType::MX,
        RecordType::CNAME,
    ] {
        refused_because(&query(&[("api.test.", t)]), "not an address lookup");
    }
    assert_eq!(
        check_query(&wire(&query(&[]))).map_err(|r| r.code),
        Err(ResponseCode::FormErr)
    );
    let mut opt = query(&[("api.test.", RecordType::A)]);
    let mut edns = Edns::new();
    edns.options_mut().insert(EdnsOption::Unknown(
        u16::from(EdnsCode::Padding) + 100,
        b"exfiltrated payload".to_vec(),
    ));
    opt.set_edns(edns);
    refused_because(&opt, "EDNS options");
    let mut extra = query(&[("api.test.", RecordType::A)]);
    extra.add_additional(Record::from_rdata(
        name("x.evil.test."),
        60,
        RData::TXT(TXT::new(vec!["data".into()])),
    ));
    refused_because(&extra, "carrying records");
    let mut binary = query(&[]);
    binary.add_query(Query::query(
        Name::from_labels(vec![b"a.b\x01c".to_vec(), b"test".to_vec()]).expect("labels"),
        RecordType::A,
    ));
    refused_because(&binary, "characters");
    let mut chaos = query(&[]);
    let mut q = Query::query(name("version.bind."), RecordType::A);
    q.set_query_class(DNSClass::CH);
    chaos.add_query(q);
    refused_because(&chaos, "class");
}

#[test]
fn the_upstream_query_is_built_from_the_question_alone() {
    let mut asked = query(&[("ApI.TeSt.", RecordType::A)]);
    let mut edns = Edns::new();
    edns.set_max_payload(4096);
    asked.set_edns(edns);
    asked.set_recursion_desired(false);
    let q = check_query(&wire(&asked)).expect("ok");
    let out = Message::from_vec(&upstream_query(&q, 777).expect("query")).expect("parses");
    assert_eq!(out.id(), 777);
    assert_eq!(out.message_type(), MessageType::Query);
    assert!(out.recursion_desired());
    assert_eq!(out.queries().len(), 1);
    assert_eq!(out.queries()[0].name().to_ascii(), "api.test.");
    assert_eq!(out.queries()[0].query_type(), RecordType::A);
    assert!(out.answers().is_empty() && out.name_servers().is_empty());
    assert!(out.additionals().is_empty());
    let edns = out.extensions().as_ref().expect("an EDNS section");
    assert_eq!(edns.max_payload(), EDNS_PAYLOAD);
    assert!(edns.options().as_ref().is_empty());
    let plain = check_query(&wire(&query(&[("api.test.", RecordType::A)]))).expect("ok");
    let out = Message::from_vec(&upstream_query(&plain, 1).expect("query")).expect("parses");
    assert!(out.extensions().is_none());
}

fn upstream_answer() -> Message {
    let mut m = query(&[("api.test.", RecordType::A)]);
    m.set_message_type(MessageType::Response)
        .set_recursion_available(true);
    let rec = |n: &str, ttl: u32, data: RData| Record::from_rdata(name(n), ttl, data);
    m.add_answer(rec(
        "api.test.",
        300,
        RData::TXT(TXT::new(vec!["secret".into()])),
    ));
    m.add_answer(rec(
        "api.test.",
        300,
        RData::CNAME(CNAME(name("cdn.test."))),
    ));
    m.add_answer(rec("cdn.test.", 60, RData::A(A::new(198, 51, 100, 1))));
    m.add_answer(rec(
        "cdn.test.",
        60,
        RData::AAAA(AAAA::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
    ));
    m.add_answer(rec("other.test.", 10, RData::A(A::new(203, 0, 113, 9))));
    m.add_answer(rec("cdn.test.", 60, RData::NULL(NULL::with(vec![1, 2, 3]))));
    m.add_name_server(rec("test.", 5, RData::TXT(TXT::new(vec!["ns".into()]))));
    m.add_additional(rec("x.test.", 5, RData::A(A::new(203, 0, 113, 7))));
    m
}

#[test]
fn the_answer_keeps_only_the_chain_to_the_asked_addresses() {
    let q = check_query(&wire(&query(&[("api.test.", RecordType::A)]))).expect("ok");
    let a = rebuild_answer(&q, &wire(&upstream_answer())).expect("answer");
    assert_eq!(a.addrs, vec!["198.51.100.1".parse::<IpAddr>().expect("ip")]);
    assert_eq!(a.ttl, 60);
    assert_eq!(a.code, ResponseCode::NoError);
    let types: Vec<RecordType> = a.records.iter().map(Record::record_type).collect();
    assert_eq!(types, [RecordType::CNAME, RecordType::A]);
    // The sandbox's copy: its id and question, those records and nothing else.
    let mut client = query(&[("API.test.", RecordType::A)]);
    client.set_id(9);
    let (bytes, carried) = reply(&wire(&client), &a, true).expect("reply");
    assert!(carried);
    let r = Message::from_vec(&bytes).expect("parses");
    assert_eq!(r.id(), 9);
    assert_eq!(r.queries(), client.queries());
    assert_eq!(r.answers(), a.records.as_slice());
    assert!(r.name_servers().is_empty() && r.additionals().is_empty());
    assert!(!bytes.windows(6).any(|w| w == b"secret"));
}

#[test]
fn an_answer_to_another_question_or_a_failure_is_not_used() {
    let q = check_query(&wire(&query(&[("api.test.", RecordType::AAAA)]))).expect("ok");
    assert!(rebuild_answer(&q, &wire(&upstream_answer())).is_err());
    let q = check_query(&wire(&query(&[("api.test.", RecordType::A)]))).expect("ok");
    let mut failed = upstream_answer();
    failed.set_response_code(ResponseCode::ServFail);
    assert!(rebuild_answer(&q, &wire(&failed)).is_err());
    let mut asked = upstream_answer();
    asked.set_message_type(MessageType::Query);
    assert!(rebuild_answer(&q, &wire(&asked)).is_err());
}

#[test]
fn a_udp_answer_too_large_goes_back_truncated_and_empty() {
    let q = check_query(&wire(&query(&[("api.test.", RecordType::A)]))).expect("ok");
    let mut big = query(&[("api.test.", RecordType::A)]);
    big.set_message_type(MessageType::Response);
    for i in 0..40u8 {
        big.add_answer(Record::from_rdata(
            name("api.test."),
            300,
            RData::A(A::new(198, 51, 100, i)),
        ));
    }
    let a = rebuild_answer(&q, &wire(&big)).expect("answer");
    assert_eq!(a.addrs.len(), 40);
    let client = wire(&query(&[("api.test.", RecordType::A)]));
    let (bytes, carried) = reply(&client, &a, true).expect("reply");
    let r = Message::from_vec(&bytes).expect("parses");
    assert!(!carried && r.truncated() && r.answers().is_empty());
    let (bytes, carried) = reply(&client, &a, false).expect("reply");
    assert!(carried && Message::from_vec(&bytes).expect("parses").answers().len() == 40);
}

#[test]
fn refusal_keeps_the_id_and_question() {
    let q = query(&[("evil.test.", RecordType::A)]);
    let bytes = error_reply(&q, ResponseCode::Refused).expect("reply");
    let r = Message::from_vec(&bytes).expect("parses");
    assert_eq!(r.id(), 4242);
    assert_eq!(r.response_code(), ResponseCode::Refused);
    assert_eq!(r.message_type(), MessageType::Response);
    assert_eq!(r.queries().len(), 1);
}
