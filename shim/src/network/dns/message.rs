//! What the forwarder lets through, as DNS messages. A query is checked ([`check_query`]):
//! one question, class IN, type A or AAAA, a host name's characters, no other records and an
//! EDNS section (if any) without options. The upstream never sees the sandbox's bytes: it is
//! asked a query built from the parsed question ([`upstream_query`]: a fresh id, RD, the name
//! in lower case, at most an option-less EDNS section). The answer is rebuilt the same way
//! ([`rebuild_answer`], [`reply`]): only the CNAMEs that lead from the asked name and the
//! addresses of the asked type at the end of that chain, nothing else the upstream sent.

use std::net::IpAddr;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

/// Largest UDP answer the forwarder asks for and gives (the DNS flag day's 1232 bytes).
pub const EDNS_PAYLOAD: u16 = 1232;

/// A UDP answer's size limit without EDNS.
const CLASSIC_UDP: usize = 512;

/// CNAMEs followed from the asked name at most.
const MAX_CHAIN: usize = 8;

/// A query the forwarder may ask upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    /// The name in lower case, without the trailing dot.
    pub name: String,
    /// `A` or `AAAA`.
    pub qtype: RecordType,
    /// The client's EDNS payload size, if it sent an EDNS section.
    pub edns_payload: Option<u16>,
}

/// Why a query is not forwarded, and the code the sandbox gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The answer's code.
    pub code: ResponseCode,
    /// For the audit stream.
    pub why: String,
}

fn refusal(code: ResponseCode, why: impl Into<String>) -> Refusal {
    Refusal {
        code,
        why: why.into(),
    }
}

/// The name and type of a query's first question, for the audit stream (`""` when none).
pub fn first_question(msg: &Message) -> (String, String) {
    msg.queries()
        .first()
        .map(|q| (name_text(q.name()), q.query_type().to_string()))
        .unwrap_or_default()
}

/// The name as the policy matches it: lower case, no trailing dot.
fn name_text(name: &Name) -> String {
    name.to_ascii().trim_end_matches('.').to_ascii_lowercase()
}

/// Checks a query from the sandbox; what it asks, if the forwarder may ask it.
pub fn check_query(msg: &Message) -> Result<Question, Refusal> {
    if msg.op_code() != OpCode::Query {
        return Err(refusal(
            ResponseCode::NotImp,
            format!("opcode {:?} is not a query", msg.op_code()),
        ));
    }
    let q = match msg.queries() {
        [q] => q,
        [] => return Err(refusal(ResponseCode::FormErr, "no question")),
        more => {
            return Err(refusal(
                ResponseCode::Refused,
                format!("{} questions in one query (one is allowed)", more.len()),
            ))
        }
    };
    if !msg.answers().is_empty()
        || !msg.name_servers().is_empty()
        || !msg.additionals().is_empty()
        || !msg.sig0().is_empty()
    {
        return Err(refusal(
            ResponseCode::Refused,
            "a query carrying records (only a question is allowed)",
        ));
    }
    let edns_payload = match msg.extensions() {
        None => None,
        Some(edns) if !edns.options().as_ref().is_empty() => {
            return Err(refusal(ResponseCode::Refused, "EDNS options in a query"));
        }
        Some(edns) if edns.version() != 0 => {
            return Err(refusal(
                ResponseCode::Refused,
                format!("EDNS version {}", edns.version()),
            ));
        }
        Some(edns) => Some(edns.max_payload()),
    };
    if q.query_class() != DNSClass::IN {
        return Err(refusal(
            ResponseCode::Refused,
            format!("class {} (only IN is answered)", q.query_class()),
        ));
    }
    let qtype = q.query_type();
    if !matches!(qtype, RecordType::A | RecordType::AAAA) {
        return Err(refusal(
            ResponseCode::Refused,
            format!("type {qtype} is not an address lookup (only A and AAAA are answered)"),
        ));
    }
    let host_chars = q.name().iter().all(|label| {
        !label.is_empty()
            && label
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
    });
    if q.name().num_labels() == 0 || !host_chars {
        return Err(refusal(
            ResponseCode::Refused,
            "a name with characters no host name has",
        ));
    }
    Ok(Question {
        name: name_text(q.name()),
        qtype,
        edns_payload,
    })
}

impl Question {
    fn fqdn(&self) -> Result<Name, String> {
        Name::from_ascii(format!("{}.", self.name)).map_err(|e| format!("name {}: {e}", self.name))
    }
}

/// The query the upstream is asked: built from `q` alone, under the id `id`.
pub fn upstream_query(q: &Question, id: u16) -> Result<Vec<u8>, String> {
    let mut m = Message::new();
    m.set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true);
    m.add_query(Query::query(q.fqdn()?, q.qtype));
    if q.edns_payload.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD).set_version(0);
        m.set_edns(edns);
    }
    m.to_vec()
        .map_err(|e| format!("building the upstream query: {e}"))
}

/// What the sandbox may learn from an upstream answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// NOERROR or NXDOMAIN (anything else is a failure).
    pub code: ResponseCode,
    /// The CNAMEs from the asked name, then the addresses at the end of the chain.
    pub records: Vec<Record>,
    /// The addresses among them.
    pub addrs: Vec<IpAddr>,
    /// The smallest TTL among them (0 without records).
    pub ttl: u32,
    /// The upstream truncated its answer (the sandbox should ask again over TCP).
    pub truncated: bool,
    /// The upstream's RA flag.
    pub recursion_available: bool,
}

/// Takes from an upstream answer only what answers `q`.
pub fn rebuild_answer(q: &Question, upstream: &Message) -> Result<Answer, String> {
    let asked = q.fqdn()?;
    let for_us = matches!(upstream.queries(), [one] if one.name() == &asked
        && one.query_type() == q.qtype
        && one.query_class() == DNSClass::IN);
    if upstream.message_type() != MessageType::Response || !for_us {
        return Err("upstream answer is not for this question".into());
    }
    let code = upstream.response_code();
    if !matches!(code, ResponseCode::NoError | ResponseCode::NXDomain) {
        return Err(format!("upstream answered {code}"));
    }
    let mut records = Vec::new();
    let mut owner = asked;
    for _ in 0..MAX_CHAIN {
        let next = upstream.answers().iter().find_map(|r| match r.data() {
            Some(RData::CNAME(target)) if r.name() == &owner && r.dns_class() == DNSClass::IN => {
                Some((r, target.0.clone()))
            }
            _ => None,
        });
        let Some((record, target)) = next else { break };
        records.push(record.clone());
        owner = target;
    }
    let mut addrs = Vec::new();
    for r in upstream.answers() {
        if r.name() != &owner || r.dns_class() != DNSClass::IN {
            continue;
        }
        let addr = match (r.data(), q.qtype) {
            (Some(RData::A(a)), RecordType::A) => IpAddr::V4(a.0),
            (Some(RData::AAAA(a)), RecordType::AAAA) => IpAddr::V6(a.0),
            _ => continue,
        };
        if !addrs.contains(&addr) {
            addrs.push(addr);
            records.push(r.clone());
        }
    }
    let ttl = records.iter().map(Record::ttl).min().unwrap_or(0);
    Ok(Answer {
        code,
        records,
        addrs,
        ttl,
        truncated: upstream.truncated(),
        recursion_available: upstream.recursion_available(),
    })
}

/// The answer the sandbox gets to `query`: its id and question, `answer`'s code and records.
/// Over UDP (`udp`), an answer larger than the client accepts goes back truncated and empty,
/// so the client asks again over TCP; the returned flag says whether the records went out.
pub fn reply(query: &Message, answer: &Answer, udp: bool) -> Result<(Vec<u8>, bool), String> {
    let build = |with_records: bool| {
        let mut m = response_to(query, answer.code);
        m.set_recursion_available(answer.recursion_available);
        if with_records {
            m.add_answers(answer.records.iter().cloned());
            m.set_truncated(answer.truncated);
        } else {
            m.set_truncated(true);
        }
        m.to_vec().map_err(|e| format!("building the answer: {e}"))
    };
    let full = build(true)?;
    let limit = match query.extensions() {
        Some(edns) => usize::from(edns.max_payload().clamp(512, EDNS_PAYLOAD)),
        None => CLASSIC_UDP,
    };
    if udp && full.len() > limit {
        return Ok((build(false)?, false));
    }
    Ok((full, true))
}

/// An answer to `query` with `code` and no records (a refusal or a failure).
pub fn error_reply(query: &Message, code: ResponseCode) -> Option<Vec<u8>> {
    let mut m = response_to(query, code);
    m.set_recursion_available(true);
    m.to_vec().ok()
}

/// The header and question of an answer to `query`: its id, RD flag and (first) question,
/// and an option-less EDNS section if it sent one.
fn response_to(query: &Message, code: ResponseCode) -> Message {
    let mut m = Message::new();
    m.set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(query.recursion_desired())
        .set_response_code(code);
    if let Some(q) = query.queries().first() {
        m.add_query(q.clone());
    }
    if query.extensions().is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD).set_version(0);
        m.set_edns(edns);
    }
    m
}

#[cfg(test)]
#[path = "message_tests.rs"]
mod tests;
