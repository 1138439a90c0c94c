//! No packet, however malformed, crashes the server or makes it answer
//! garbage: a corpus of hand-made malformed queries over the wire, then
//! tens of thousands of seeded mutations of valid queries straight into
//! the answering code. Every answer must parse, carry the query's id and
//! be a response.

use crate::helpers::*;
use dns::answer::{Transport, Zone};
use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::opt::ClientSubnet;
use hickory_proto::rr::RecordType;
use rand::{Rng, SeedableRng};
use std::net::IpAddr;
use std::time::Duration;

/// Malformed packets each written to hit one parser path.
fn corpus() -> Vec<Vec<u8>> {
    let header = |qd: u16, an: u16, ar: u16| {
        let mut h = vec![0x12, 0x34, 0x01, 0x00];
        for c in [qd, an, 0, ar] {
            h.extend_from_slice(&c.to_be_bytes());
        }
        h
    };
    let with = |mut h: Vec<u8>, rest: &[u8]| {
        h.extend_from_slice(rest);
        h
    };
    vec![
        vec![],
        vec![0x12],
        vec![0x12, 0x34, 0x01, 0x00, 0, 1],
        header(1, 0, 0),
        header(0xffff, 0, 0),
        // A compression pointer to itself.
        with(header(1, 0, 0), &[0xc0, 12, 0, 1, 0, 1]),
        // A pointer forward, past the end.
        with(header(1, 0, 0), &[0xc0, 0xff, 0, 1, 0, 1]),
        // A label longer than 63.
        with(header(1, 0, 0), &[64, b'a', 0, 0, 1, 0, 1]),
        // A label running past the packet.
        with(header(1, 0, 0), &[20, b'w', b'w', b'w']),
        // A name past 255 bytes.
        with(
            header(1, 0, 0),
            &[
                &[63u8; 1][..],
                &[b'a'; 63],
                &[63],
                &[b'a'; 63],
                &[63],
                &[b'a'; 63],
                &[63],
                &[b'a'; 63],
                &[0, 0, 1, 0, 1],
            ]
            .concat(),
        ),
        // No type or class after the name.
        with(header(1, 0, 0), &[3, b'w', b'w', b'w', 0]),
        // An answer count with no answers.
        with(header(1, 5, 0), &[3, b'w', b'w', b'w', 0, 0, 1, 0, 1]),
        // An OPT whose rdata length runs past the end.
        with(
            header(1, 0, 1),
            &[
                3, b'w', b'w', b'w', 0, 0, 1, 0, 1, 0, 0, 41, 4, 0, 0, 0, 0, 0, 0xff, 0xff,
            ],
        ),
        // An OPT option whose length runs past its rdata.
        with(
            header(1, 0, 1),
            &[
                3, b'w', b'w', b'w', 0, 0, 1, 0, 1, 0, 0, 41, 4, 0, 0, 0, 0, 0, 0, 4, 0, 8, 0, 50,
            ],
        ),
        // A client subnet with a /200 IPv4 prefix.
        with(
            header(1, 0, 1),
            &[
                3, b'w', b'w', b'w', 0, 0, 1, 0, 1, 0, 0, 41, 4, 0, 0, 0, 0, 0, 0, 8, 0, 8, 0, 4, 0, 1, 200,
                0,
            ],
        ),
        // Garbage.
        (0..600).map(|i| (i * 7 + 3) as u8).collect(),
        vec![0xff; 512],
    ]
}

/// Well-formed queries the mutations start from.
fn seeds() -> Vec<Vec<u8>> {
    let www = format!("www.{ZONE}");
    vec![
        query(&www, RecordType::A, None, None),
        query(
            &www,
            RecordType::A,
            Some(1232),
            Some(ClientSubnet::new([10, 9, 0, 0].into(), 16, 0)),
        ),
        query(&format!("cdn.{ZONE}"), RecordType::AAAA, Some(4096), None),
        query(ZONE, RecordType::NS, Some(1232), None),
        query(&format!("nope.{ZONE}"), RecordType::TXT, None, None),
        query("example.com", RecordType::A, None, None),
    ]
    .into_iter()
    .map(|m| m.to_vec().unwrap())
    .collect()
}

/// What every answer must be.
fn check(query: &[u8], answer: &[u8]) {
    let m = Message::from_vec(answer)
        .unwrap_or_else(|e| panic!("unparsable answer {answer:?} to {query:?}: {e}"));
    assert_eq!(m.metadata.message_type, MessageType::Response);
    assert_eq!(m.metadata.id, u16::from_be_bytes([query[0], query[1]]));
    assert!(answer.len() <= 1232);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_packets_over_the_wire_get_formerr_or_nothing() {
    let s = spawn(two_sites(None, None)).await;
    let src: IpAddr = [127, 0, 3, 1].into();
    let mut formerr = 0;
    for packet in corpus() {
        if let Some(answer) = udp_raw(s.addr, src, &packet, Duration::from_millis(200)) {
            check(&packet, &answer);
            formerr += usize::from(
                Message::from_vec(&answer).unwrap().metadata.response_code == ResponseCode::FormErr,
            );
        }
    }
    assert!(formerr >= 10, "FORMERR answers: {formerr}");
    // Still serving.
    let a = udp(
        s.addr,
        src,
        &query(&format!("www.{ZONE}"), RecordType::A, None, None),
    );
    assert_eq!(a.answers.len(), 1);
    s.stop().await;
}

#[test]
fn mutated_queries_never_crash_nor_get_garbage() {
    let zone = Zone::new(&two_sites(None, None)).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7871);
    let seeds = seeds();
    let mut answered = 0;
    for i in 0..30_000 {
        let mut p = seeds[i % seeds.len()].clone();
        for _ in 0..rng.gen_range(1..6) {
            match rng.gen_range(0..4) {
                0 if !p.is_empty() => {
                    let at = rng.gen_range(0..p.len());
                    p[at] ^= 1 << rng.gen_range(0..8);
                }
                1 if !p.is_empty() => {
                    let at = rng.gen_range(0..p.len());
                    p[at] = rng.gen();
                }
                2 => p.truncate(rng.gen_range(0..=p.len())),
                _ => {
                    let at = rng.gen_range(0..=p.len());
                    p.insert(at, rng.gen());
                }
            }
        }
        for transport in [Transport::Udp, Transport::Tcp] {
            if let Some(a) = zone.respond(&p, [127, 0, 1, 1].into(), transport, (0b11, 0b11)) {
                check(&p, &a.bytes);
                answered += 1;
            }
        }
    }
    assert!(answered > 30_000, "answered {answered}");
}

/// The answer cache answers what the full path does: for plain queries it keeps (with other ids, name cases, client
/// subnets, sizes and site states) and for every mutation above.
#[test]
fn the_answer_cache_answers_what_the_full_path_does() {
    use dns::fast::AnswerCache;
    let mut config = two_sites(None, None);
    // Big enough to be truncated for some clients.
    config.sites[1].www = (1..=40).map(|i| IpAddr::from([127, 0, 2, i])).collect();
    let zone = Zone::new(&config).unwrap();
    let mut cache = AnswerCache::default();
    let mut rng = rand::rngs::StdRng::seed_from_u64(8482);
    let names = ["www", "WwW", "cdn", "CDN", "ns1", "nope", "", "a.www"];
    let types = [
        RecordType::A,
        RecordType::AAAA,
        RecordType::NS,
        RecordType::SOA,
        RecordType::MX,
        RecordType::ANY,
        RecordType::AXFR,
    ];
    let mut compared = 0;
    for i in 0..20_000 {
        let label = names[rng.gen_range(0..names.len())];
        let zone_name = if rng.gen_bool(0.5) {
            "photos.test"
        } else {
            "PHOTOS.test"
        };
        let name = if label.is_empty() {
            zone_name.to_owned()
        } else {
            format!("{label}.{zone_name}")
        };
        let name = if rng.gen_bool(0.05) {
            "example.com".to_owned()
        } else {
            name
        };
        let ecs = rng.gen_bool(0.5).then(|| {
            let source = rng.gen_range(0..=32u8);
            let addr = IpAddr::from([10, rng.gen_range(0..16), rng.gen(), rng.gen()]);
            ClientSubnet::new(dns::geo::mask(addr, source), source, 0)
        });
        let edns = rng
            .gen_bool(0.7)
            .then(|| [0u16, 512, 1232, 4096][rng.gen_range(0..4)]);
        let mut m = query(
            &name,
            types[rng.gen_range(0..types.len())],
            edns,
            ecs.filter(|_| edns.is_some()),
        );
        m.metadata.recursion_desired = rng.gen();
        let mut p = m.to_vec().unwrap();
        if i % 3 == 0 {
            // A mutation too, now and then.
            let at = rng.gen_range(0..p.len());
            p[at] ^= 1 << rng.gen_range(0..8);
        }
        let source = IpAddr::from([127, 0, rng.gen_range(1..=3), 9]);
        let states = [(0b11, 0b11), (0b10, 0b10), (0, 0b01)][rng.gen_range(0..3)];
        let transport = if rng.gen_bool(0.8) {
            Transport::Udp
        } else {
            Transport::Tcp
        };
        let fast = zone.respond_cached(&mut cache, &p, source, transport, states);
        let full = zone.respond(&p, source, transport, states);
        match (fast, full) {
            (Some(f), Some(s)) => {
                // The same message; names compare without case (a kept
                // answer compresses names against the question as first
                // asked, so its bytes may differ from the full path's).
                let parse =
                    |b: &[u8]| Message::from_vec(b).unwrap_or_else(|e| panic!("{e}: {b:?} for {p:?}"));
                assert_eq!(parse(&f.bytes), parse(&s.bytes), "query {p:?}");
                assert_eq!(parse(&f.truncated()), parse(&s.truncated()), "query {p:?}");
                if let (Some(a), Ok(q)) = (parse(&f.bytes).queries.first(), Message::from_vec(&p)) {
                    assert_eq!(
                        a.name().to_string(),
                        q.queries[0].name().to_string(),
                        "the question as asked"
                    );
                }
                compared += 1;
            }
            (None, None) => {}
            (f, s) => panic!(
                "fast {:?} and full {:?} disagree on {p:?}",
                f.map(|a| a.bytes),
                s.map(|a| a.bytes)
            ),
        }
    }
    let (kept, hits) = cache.stats();
    assert!(
        compared > 19_000 && hits > 5_000,
        "compared {compared}, kept {kept}, hits {hits}"
    );
}
