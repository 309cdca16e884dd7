//! Root-free stand-in for the fuzz target: random and mutated packets thrown
//! at the decoder must never panic, and whatever decodes must seal into
//! exactly one line.

use safehouse_audit::encode::{exit, packet, sockaddr_in, Context};
use safehouse_audit::names::message_type as mt;
use safehouse_audit::proto::container::ContainerStart;
use safehouse_audit::proto::sentry::SentryExecve;
use safehouse_audit::proto::syscall::{SyscallConnect, SyscallOpen};
use safehouse_audit::{decode_packet, Body, Chain};

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn check(data: &[u8], chain: &mut Chain) {
    let _ = safehouse_audit::wire::parse_handshake(data);
    if let Ok(decoded) = decode_packet(data) {
        if let Body::Event(mut ev) = decoded.body {
            ev.sandbox_id = String::new();
            match chain.seal(&mut ev) {
                Ok(line) => assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1),
                Err(e) => panic!("decoded event failed to seal: {e}"),
            }
        }
    }
}

fn seeds() -> Vec<Vec<u8>> {
    let ctx = Context {
        time_ns: 9,
        tid: 2,
        pid: 2,
        container_id: "c".into(),
        cwd: "/".into(),
        name: "sh".into(),
        uid_gid: Some((0, 0)),
    };
    vec![
        packet(
            mt::CONTAINER_START,
            0,
            &ContainerStart {
                context_data: ctx.to_proto(),
                args: vec![b"sh".to_vec(), b"-c".to_vec()],
                ..Default::default()
            },
        ),
        packet(
            mt::SENTRY_EXEC,
            1,
            &SentryExecve {
                context_data: ctx.to_proto(),
                binary_path: b"/bin/cat".to_vec(),
                argv: vec![b"cat".to_vec()],
                ..Default::default()
            },
        ),
        packet(
            mt::SYSCALL_OPEN,
            2,
            &SyscallOpen {
                context_data: ctx.to_proto(),
                exit: exit(3, 0),
                sysno: 257,
                fd: -100,
                pathname: b"a/b".to_vec(),
                flags: 0o101,
                ..Default::default()
            },
        ),
        packet(
            mt::SYSCALL_CONNECT,
            3,
            &SyscallConnect {
                context_data: ctx.to_proto(),
                exit: exit(-1, 111),
                sysno: 42,
                fd: 3,
                address: sockaddr_in([127, 0, 0, 1].into(), 80),
                ..Default::default()
            },
        ),
    ]
}

#[test]
fn random_bytes_never_panic_the_decoder() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut chain = Chain::new("fuzz");
    for _ in 0..100_000 {
        let len = rng.below(300) as usize;
        let mut data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        // Half the time make the header plausible so payload parsing is reached.
        if len >= 8 && rng.below(2) == 0 {
            data[0] = 8;
            data[1] = 0;
            data[2] = rng.below(40) as u8;
            data[3] = 0;
        }
        check(&data, &mut chain);
    }
}

#[test]
fn mutated_valid_packets_never_panic_the_decoder() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let mut chain = Chain::new("fuzz");
    let seeds = seeds();
    for i in 0..100_000 {
        let mut data = seeds[i % seeds.len()].clone();
        for _ in 0..=rng.below(4) {
            match rng.below(4) {
                0 if !data.is_empty() => {
                    let at = rng.below(data.len() as u64) as usize;
                    data[at] = rng.next() as u8;
                }
                1 if !data.is_empty() => {
                    let at = rng.below(data.len() as u64) as usize;
                    data.truncate(at);
                }
                2 => {
                    let at = rng.below(data.len() as u64 + 1) as usize;
                    data.insert(at, rng.next() as u8);
                }
                _ => {
                    // Retype: the payload is parsed as another message type.
                    if data.len() >= 4 {
                        data[2] = rng.below(40) as u8;
                    }
                }
            }
        }
        check(&data, &mut chain);
    }
}
