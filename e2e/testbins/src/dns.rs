//! A minimal authoritative DNS answerer for the cluster domain (RFC 1035 wire format).
//!
//! It answers one question per message: `A` and `AAAA` of names listed in a record file, with
//! NOERROR and no answer for a listed name without records of the asked type, NXDOMAIN for other
//! names inside the cluster domain, and REFUSED for names outside it (the local cluster has no
//! upstream: no query leaves the machine). Record file: one `<name> <ip>` per line, `#` comments.

use std::collections::BTreeMap;
use std::net::IpAddr;

/// Record type A.
pub const TYPE_A: u16 = 1;
/// Record type AAAA.
pub const TYPE_AAAA: u16 = 28;
/// Class IN.
pub const CLASS_IN: u16 = 1;
/// TTL of every answer: short, Services come and go during the tests.
pub const TTL_SECS: u32 = 5;

/// Response codes used here.
pub const RCODE_NOERROR: u8 = 0;
pub const RCODE_FORMERR: u8 = 1;
pub const RCODE_NXDOMAIN: u8 = 3;
pub const RCODE_NOTIMP: u8 = 4;
pub const RCODE_REFUSED: u8 = 5;

const HEADER_LEN: usize = 12;
const MAX_NAME_LEN: usize = 255;

/// Names (lower case, no trailing dot) to their addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Records {
    names: BTreeMap<String, Vec<IpAddr>>,
}

impl Records {
    /// Parses a record file; returns the records and the lines it could not read.
    pub fn parse(text: &str) -> (Records, Vec<String>) {
        let mut records = Records::default();
        let mut bad = Vec::new();
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let mut fields = line.split_whitespace();
            match (
                fields.next(),
                fields.next().map(str::parse::<IpAddr>),
                fields.next(),
            ) {
                (Some(name), Some(Ok(ip)), None) => records.add(name, ip),
                _ => bad.push(line.to_owned()),
            }
        }
        (records, bad)
    }

    /// Adds an address to a name.
    pub fn add(&mut self, name: &str, ip: IpAddr) {
        let ips = self.names.entry(normalize(name)).or_default();
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }

    /// The addresses of a name, if it is listed.
    pub fn get(&self, name: &str) -> Option<&[IpAddr]> {
        self.names.get(&normalize(name)).map(Vec::as_slice)
    }
}

fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// One question of a query.
#[derive(Debug, PartialEq, Eq)]
pub struct Question {
    pub name: String,
    pub qtype: u16,
    pub qclass: u16,
    /// Where the question ends in the message (the answer repeats it).
    end: usize,
}

/// Reads the first question of a query, or `None` when the message is not a readable query.
pub fn parse_question(msg: &[u8]) -> Option<Question> {
    if msg.len() < HEADER_LEN || msg[2] & 0x80 != 0 || u16::from_be_bytes([msg[4], msg[5]]) == 0 {
        return None;
    }
    let mut pos = HEADER_LEN;
    let mut labels: Vec<String> = Vec::new();
    loop {
        let len = usize::from(*msg.get(pos)?);
        pos += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None; // compression pointers are not used in questions of queries
        }
        let label = msg.get(pos..pos + len)?;
        labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
        pos += len;
        if pos - HEADER_LEN > MAX_NAME_LEN {
            return None;
        }
    }
    let qtype = u16::from_be_bytes([*msg.get(pos)?, *msg.get(pos + 1)?]);
    let qclass = u16::from_be_bytes([*msg.get(pos + 2)?, *msg.get(pos + 3)?]);
    Some(Question {
        name: labels.join("."),
        qtype,
        qclass,
        end: pos + 4,
    })
}

/// The answer to a query message, or `None` when it should be dropped (too short to answer).
pub fn answer(msg: &[u8], records: &Records, domain: &str) -> Option<Vec<u8>> {
    if msg.len() < HEADER_LEN {
        return None;
    }
    let Some(q) = parse_question(msg) else {
        return Some(header_only(msg, RCODE_FORMERR));
    };
    let opcode = (msg[2] >> 3) & 0x0f;
    if opcode != 0 || q.qclass != CLASS_IN {
        return Some(header_only(msg, RCODE_NOTIMP));
    }
    let domain = normalize(domain);
    let in_zone = q.name == domain || q.name.ends_with(&format!(".{domain}"));
    if !in_zone {
        return Some(header_only(msg, RCODE_REFUSED));
    }
    let (rcode, ips): (u8, Vec<IpAddr>) = match records.get(&q.name) {
        None => (RCODE_NXDOMAIN, Vec::new()),
        Some(ips) => (
            RCODE_NOERROR,
            ips.iter()
                .copied()
                .filter(|ip| match q.qtype {
                    TYPE_A => ip.is_ipv4(),
                    TYPE_AAAA => ip.is_ipv6(),
                    _ => false,
                })
                .collect(),
        ),
    };
    let mut out = Vec::with_capacity(q.end + ips.len() * 28);
    out.extend_from_slice(&msg[..2]); // id
    out.push(0x84 | (msg[2] & 0x01)); // QR, AA, RD copied
    out.push(rcode);
    out.extend_from_slice(&1u16.to_be_bytes()); // one question
    let count = u16::try_from(ips.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&count.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]); // no authority, no additional
    out.extend_from_slice(&msg[HEADER_LEN..q.end]);
    for ip in ips.iter().take(usize::from(count)) {
        out.extend_from_slice(&[0xc0, 0x0c]); // the question's name
        let (qtype, data): (u16, Vec<u8>) = match ip {
            IpAddr::V4(v4) => (TYPE_A, v4.octets().to_vec()),
            IpAddr::V6(v6) => (TYPE_AAAA, v6.octets().to_vec()),
        };
        out.extend_from_slice(&qtype.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&TTL_SECS.to_be_bytes());
        let len = u16::try_from(data.len()).unwrap_or_default();
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&data);
    }
    Some(out)
}

/// A reply with the query's id and the given code, no question and no answer.
fn header_only(msg: &[u8], rcode: u8) -> Vec<u8> {
    let mut out = vec![0u8; HEADER_LEN];
    out[..2].copy_from_slice(&msg[..2]);
    out[2] = 0x80 | (msg[2] & 0x79); // QR, opcode and RD copied
    out[3] = rcode;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut m = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.split('.') {
            m.push(u8::try_from(label.len()).unwrap_or_default());
            m.extend_from_slice(label.as_bytes());
        }
        m.push(0);
        m.extend_from_slice(&qtype.to_be_bytes());
        m.extend_from_slice(&CLASS_IN.to_be_bytes());
        m
    }

    fn records() -> Records {
        let (r, bad) = Records::parse(
            "# services\nkubernetes.default.svc.cluster.local 10.96.0.1\n\
             kubernetes.default.svc.cluster.local fd00:10:96::1\nweb.demo.svc.cluster.local. 10.96.4.7\n\
             garbage line here\n",
        );
        assert_eq!(bad, vec!["garbage line here".to_owned()]);
        r
    }

    #[test]
    fn answers_a_and_aaaa_of_listed_names() {
        let r = records();
        let a = answer(
            &query("kubernetes.default.svc.cluster.local", TYPE_A),
            &r,
            "cluster.local",
        )
        .expect("answer");
        assert_eq!(&a[..2], &[0x12, 0x34], "id");
        assert_eq!(a[2] & 0x80, 0x80, "a response");
        assert_eq!(a[3] & 0x0f, RCODE_NOERROR);
        assert_eq!(u16::from_be_bytes([a[6], a[7]]), 1, "one answer");
        assert_eq!(&a[a.len() - 4..], &[10, 96, 0, 1]);

        let aaaa = answer(
            &query("Kubernetes.Default.svc.cluster.local", TYPE_AAAA),
            &r,
            "cluster.local",
        )
        .expect("answer");
        assert_eq!(u16::from_be_bytes([aaaa[6], aaaa[7]]), 1);
        let v6: std::net::Ipv6Addr = "fd00:10:96::1".parse().expect("ip");
        assert_eq!(&aaaa[aaaa.len() - 16..], &v6.octets());
    }

    #[test]
    fn listed_name_without_that_family_is_nodata() {
        let a = answer(
            &query("web.demo.svc.cluster.local", TYPE_AAAA),
            &records(),
            "cluster.local",
        )
        .expect("answer");
        assert_eq!(a[3] & 0x0f, RCODE_NOERROR);
        assert_eq!(u16::from_be_bytes([a[6], a[7]]), 0);
    }

    #[test]
    fn unknown_names_are_nxdomain_inside_and_refused_outside() {
        let r = records();
        let nx = answer(
            &query("nope.demo.svc.cluster.local", TYPE_A),
            &r,
            "cluster.local",
        )
        .expect("a");
        assert_eq!(nx[3] & 0x0f, RCODE_NXDOMAIN);
        let out = answer(&query("example.com", TYPE_A), &r, "cluster.local").expect("a");
        assert_eq!(out[3] & 0x0f, RCODE_REFUSED);
        let evil = answer(&query("evilcluster.local", TYPE_A), &r, "cluster.local").expect("a");
        assert_eq!(
            evil[3] & 0x0f,
            RCODE_REFUSED,
            "a suffix without the dot is outside"
        );
    }

    #[test]
    fn broken_messages_get_formerr_or_nothing() {
        assert_eq!(answer(&[1, 2, 3], &records(), "cluster.local"), None);
        let mut truncated = query("web.demo.svc.cluster.local", TYPE_A);
        truncated.truncate(20);
        let r = answer(&truncated, &records(), "cluster.local").expect("formerr");
        assert_eq!(r[3] & 0x0f, RCODE_FORMERR);
        let mut response = query("web.demo.svc.cluster.local", TYPE_A);
        response[2] |= 0x80;
        assert_eq!(parse_question(&response), None, "a response is not a query");
    }
}
