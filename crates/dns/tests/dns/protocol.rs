//! The protocol, asked by dig and by hickory-proto messages: answers per
//! region by source address and by client subnet, the scope prefix, TCP,
//! truncation, NXDOMAIN / NODATA / REFUSED / FORMERR / BADVERS, case, rate
//! limiting, and the metrics that count them.

use crate::helpers::*;
use dns::config::RrlConfig;
use hickory_proto::op::{Edns, MessageType, ResponseCode};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsCode, EdnsOption};
use hickory_proto::rr::{RData, RecordType};
use std::net::IpAddr;
use std::time::Duration;

fn no_rrl(mut c: dns::DnsConfig) -> dns::DnsConfig {
    c.rrl.responses_per_second = 0;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_region_gets_its_own_site_by_source_address_and_by_client_subnet() {
    let s = spawn(no_rrl(two_sites(None, None))).await;
    let www = format!("www.{ZONE}");
    let cdn = format!("cdn.{ZONE}");
    // By source address (dig -b).
    let east = dig(s.addr, "127.0.1.7", &[&www, "A"]);
    assert_eq!(east.status(), "NOERROR");
    assert!(east.flags().contains(&"aa"), "{}", east.out);
    assert!(
        !east.flags().contains(&"ra"),
        "no recursion offered: {}",
        east.out
    );
    assert_eq!(east.answers("A"), ["127.0.1.1"]);
    assert_eq!(dig(s.addr, "127.0.2.7", &[&www, "A"]).answers("A"), ["127.0.2.1"]);
    assert_eq!(dig(s.addr, "127.0.2.7", &[&cdn, "A"]).answers("A"), ["127.0.2.2"]);
    // A source in no region: the default region (the first).
    assert_eq!(dig(s.addr, "127.0.0.9", &[&www, "A"]).answers("A"), ["127.0.1.1"]);
    // By client subnet: a resolver in east asking for a client in west;
    // the answer's scope is the deciding network's prefix (/16), wider or
    // narrower than the source prefix as the map says.
    let west = dig(s.addr, "127.0.1.7", &[&www, "A", "+subnet=10.9.3.0/24"]);
    assert_eq!(west.answers("A"), ["127.0.2.1"], "{}", west.out);
    assert_eq!(west.client_subnet().as_deref(), Some("10.9.3.0/24/16"));
    let east = dig(s.addr, "127.0.2.7", &[&www, "A", "+subnet=10.1.0.0/16"]);
    assert_eq!(east.answers("A"), ["127.0.1.1"]);
    assert_eq!(east.client_subnet().as_deref(), Some("10.1.0.0/16/8"));
    // A subnet of no region: scope 0 (the answer holds for everyone).
    let nowhere = dig(s.addr, "127.0.2.7", &[&www, "A", "+subnet=192.0.2.0/24"]);
    assert_eq!(nowhere.answers("A"), ["127.0.1.1"]);
    assert_eq!(nowhere.client_subnet().as_deref(), Some("192.0.2.0/24/0"));
    // Source prefix 0: the client opted out; its address decides, scope 0.
    let optout = dig(s.addr, "127.0.2.7", &[&www, "A", "+subnet=0.0.0.0/0"]);
    assert_eq!(optout.answers("A"), ["127.0.2.1"]);
    assert_eq!(optout.client_subnet().as_deref(), Some("0.0.0.0/0/0"));
    // The same through a library client, over UDP and TCP.
    let m = query(
        &www,
        RecordType::A,
        Some(1232),
        Some(ClientSubnet::new([10, 9, 0, 0].into(), 16, 0)),
    );
    for answer in [udp(s.addr, [127, 0, 1, 1].into(), &m), tcp(s.addr, &m)] {
        assert_eq!(answer.metadata.message_type, MessageType::Response);
        assert_eq!(answer.metadata.id, m.metadata.id);
        assert_eq!(answer.answers.len(), 1);
        assert_eq!(&answer.answers[0].data, &RData::A("127.0.2.1".parse().unwrap()));
        assert_eq!(answer.answers[0].ttl, 5);
        let Some(EdnsOption::Subnet(ecs)) = answer.edns.as_ref().unwrap().option(EdnsCode::Subnet) else {
            panic!("no client subnet in the answer")
        };
        assert_eq!((ecs.source_prefix(), ecs.scope_prefix()), (16, 16));
    }
    let metrics = metrics(s.admin).await;
    assert!(
        metrics.contains(r#"scalestack_dns_queries_total{qtype="A",rcode="NOERROR",region="west",site="dc2",transport="tcp"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"scalestack_dns_located_total{by="ecs"}"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"scalestack_dns_located_total{by="source"}"#),
        "{metrics}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_answers_carry_the_soa_and_foreign_names_are_refused() {
    let s = spawn(no_rrl(two_sites(None, None))).await;
    let src = "127.0.1.3";
    // NXDOMAIN: no such name; the SOA in the authority section.
    let nx = dig(s.addr, src, &[&format!("nope.{ZONE}"), "A"]);
    assert_eq!(nx.status(), "NXDOMAIN");
    assert!(nx.flags().contains(&"aa"));
    assert_eq!(nx.authority().len(), 1, "{}", nx.out);
    assert_eq!(nx.authority()[0][3], "SOA");
    // Deeper names under an existing one do not exist either.
    assert_eq!(
        dig(s.addr, src, &[&format!("a.www.{ZONE}"), "A"]).status(),
        "NXDOMAIN"
    );
    // NODATA: the name exists, not the type.
    let nodata = dig(s.addr, src, &[&format!("www.{ZONE}"), "MX"]);
    assert_eq!(nodata.status(), "NOERROR");
    assert!(nodata.answers("MX").is_empty());
    assert_eq!(nodata.authority()[0][3], "SOA");
    assert_eq!(
        dig(s.addr, src, &[&format!("www.{ZONE}"), "AAAA"])
            .answers("AAAA")
            .len(),
        0
    );
    // The apex: SOA and two NS, with their addresses as glue.
    let soa = dig(s.addr, src, &[ZONE, "SOA"]);
    assert_eq!(soa.answers("SOA").len(), 1);
    assert!(soa.answers("SOA")[0].starts_with(&format!("ns1.{ZONE}. hostmaster.{ZONE}.")));
    let ns = dig(s.addr, src, &[ZONE, "NS"]);
    assert_eq!(ns.answers("NS").len(), 2, "{}", ns.out);
    assert!(ns.out.contains(&format!("ns2.{ZONE}.")));
    assert_eq!(
        dig(s.addr, src, &[&format!("ns2.{ZONE}"), "A"]).answers("A"),
        ["127.0.0.2"]
    );
    // Case does not matter; the question comes back as asked.
    let mixed = dig(s.addr, src, &["wWw.PhOtOs.TeSt", "A"]);
    assert_eq!(mixed.answers("A"), ["127.0.1.1"]);
    assert!(mixed.out.contains(";wWw.PhOtOs.TeSt."), "{}", mixed.out);
    // Outside the zone: REFUSED, no recursion.
    for name in ["example.com", "test", "photos.test.evil", "xphotos.test"] {
        let r = dig(s.addr, src, &[name, "A"]);
        assert_eq!(r.status(), "REFUSED", "{name}: {}", r.out);
        assert!(r.answers("A").is_empty());
    }
    // No zone transfers, no class but IN.
    let m = query(ZONE, RecordType::AXFR, None, None);
    assert_eq!(tcp(s.addr, &m).metadata.response_code, ResponseCode::Refused);
    assert_eq!(
        dig(s.addr, src, &["-c", "CH", &format!("www.{ZONE}"), "TXT"]).status(),
        "REFUSED"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_answers_are_truncated_over_udp_and_whole_over_tcp() {
    let mut config = no_rrl(two_sites(None, None));
    // 60 addresses: 60 × 16 bytes is past 512 and within 1232.
    config.sites[0].www = (1..=60).map(|i| IpAddr::from([127, 0, 1, i])).collect();
    let s = spawn(config).await;
    let www = format!("www.{ZONE}");
    let src: IpAddr = [127, 0, 1, 1].into();
    // No EDNS: 512 bytes at most; TC set, no answers.
    let small = udp(s.addr, src, &query(&www, RecordType::A, None, None));
    assert!(small.metadata.truncation);
    assert!(small.answers.is_empty());
    assert_eq!(small.queries.len(), 1);
    // EDNS offering 512: the same.
    let small = udp(s.addr, src, &query(&www, RecordType::A, Some(512), None));
    assert!(small.metadata.truncation);
    // EDNS offering 4096: capped at our 1232, which is enough.
    let big = udp(s.addr, src, &query(&www, RecordType::A, Some(4096), None));
    assert!(!big.metadata.truncation);
    assert_eq!(big.answers.len(), 60);
    assert_eq!(big.edns.as_ref().unwrap().max_payload(), 1232);
    // TCP: all of it.
    assert_eq!(
        tcp(s.addr, &query(&www, RecordType::A, None, None)).answers.len(),
        60
    );
    // dig retries over TCP by itself on TC.
    let d = dig(s.addr, "127.0.1.1", &["+noedns", &www, "A"]);
    assert!(d.out.contains("Truncated, retrying in TCP mode"), "{}", d.out);
    assert_eq!(d.answers("A").len(), 60);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_options_and_unknown_versions_get_errors() {
    let s = spawn(no_rrl(two_sites(None, None))).await;
    let www = format!("www.{ZONE}");
    let src: IpAddr = [127, 0, 1, 1].into();
    // A client subnet with bits set past its prefix, or a scope in a query.
    for bad in [
        ClientSubnet::new([10, 9, 3, 0].into(), 20, 0),
        ClientSubnet::new([10, 9, 0, 0].into(), 16, 8),
    ] {
        let a = udp(s.addr, src, &query(&www, RecordType::A, Some(1232), Some(bad)));
        assert_eq!(a.metadata.response_code, ResponseCode::FormErr, "{bad:?}");
        assert!(a.answers.is_empty());
    }
    // A client subnet too short for its prefix, or of an unknown family:
    // the packet does not parse; FORMERR with the query's id.
    let mut m = query(&www, RecordType::A, Some(1232), None);
    m.edns
        .as_mut()
        .unwrap()
        .options_mut()
        .insert(EdnsOption::Unknown(8, vec![0, 1, 24, 0, 10]));
    let a = udp(s.addr, src, &m);
    assert_eq!(a.metadata.response_code, ResponseCode::FormErr);
    assert_eq!(a.metadata.id, m.metadata.id);
    m.edns
        .as_mut()
        .unwrap()
        .options_mut()
        .insert(EdnsOption::Unknown(8, vec![0, 7, 8, 0, 10]));
    assert_eq!(udp(s.addr, src, &m).metadata.response_code, ResponseCode::FormErr);
    // EDNS version 1: BADVERS, with an OPT saying we speak version 0.
    let mut m = query(&www, RecordType::A, None, None);
    let mut e = Edns::new();
    e.set_version(1);
    m.set_edns(e);
    let a = udp(s.addr, src, &m);
    // Code 16, which hickory reads back as BADSIG (the two share it).
    assert_eq!(u16::from(a.metadata.response_code), 16);
    assert_eq!(a.edns.as_ref().unwrap().version(), 0);
    // Two questions: FORMERR. A NOTIFY: NOTIMP.
    let mut m = query(&www, RecordType::A, None, None);
    m.add_query(m.queries[0].clone());
    assert_eq!(udp(s.addr, src, &m).metadata.response_code, ResponseCode::FormErr);
    let mut m = query(&www, RecordType::SOA, None, None);
    m.metadata.op_code = hickory_proto::op::OpCode::Notify;
    assert_eq!(udp(s.addr, src, &m).metadata.response_code, ResponseCode::NotImp);
    // A response is never answered (no loops between servers).
    let mut m = query(&www, RecordType::A, None, None);
    m.metadata.message_type = MessageType::Response;
    assert!(udp_raw(s.addr, src, &m.to_vec().unwrap(), Duration::from_millis(300)).is_none());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limiting_drops_repeats_and_slips_some_to_tcp() {
    let mut config = two_sites(None, None);
    config.rrl = RrlConfig {
        responses_per_second: 5,
        slip: 2,
        exempt: vec!["127.0.9.0/24".into()],
    };
    let s = spawn(config).await;
    let www = format!("www.{ZONE}");
    let bytes = query(&www, RecordType::A, None, None).to_vec().unwrap();
    let ask = |src: [u8; 4]| udp_raw(s.addr, src.into(), &bytes, Duration::from_millis(150));
    // A burst of 20 from one /24, sent at once: 5 answered, then every
    // other one dropped and every other one slipped (empty, TC=1).
    let socket = std::net::UdpSocket::bind("127.0.1.50:0").unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    for _ in 0..20 {
        socket.send_to(&bytes, s.addr).unwrap();
    }
    let (mut full, mut slipped) = (0, 0);
    let mut buf = [0u8; 1500];
    while let Ok(n) = socket.recv(&mut buf) {
        match hickory_proto::op::Message::from_vec(&buf[..n])
            .unwrap()
            .metadata
            .truncation
        {
            true => slipped += 1,
            false => full += 1,
        }
    }
    assert_eq!((full, slipped), (5, 7), "answered in full, slipped");
    // Over TCP the same client is answered: it cannot be spoofed.
    let m = query(&www, RecordType::A, None, None);
    assert_eq!(tcp(s.addr, &m).answers.len(), 1);
    // An exempt network is never limited.
    assert!((0..20).all(|_| ask([127, 0, 9, 1]).is_some()));
    let metrics = metrics(s.admin).await;
    assert!(
        metrics.contains(r#"scalestack_dns_rate_limited_total{verdict="dropped"}"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"scalestack_dns_rate_limited_total{verdict="slipped"}"#),
        "{metrics}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_answers_several_queries_on_one_connection_in_order() {
    use std::io::{Read, Write};
    let s = spawn(no_rrl(two_sites(None, None))).await;
    let mut c = std::net::TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let queries = [
        query(&format!("www.{ZONE}"), RecordType::A, None, None),
        query(&format!("nope.{ZONE}"), RecordType::A, None, None),
        query(ZONE, RecordType::SOA, Some(1232), None),
    ];
    // All three sent before any answer is read (pipelined).
    for q in &queries {
        let bytes = q.to_vec().unwrap();
        c.write_all(&(bytes.len() as u16).to_be_bytes()).unwrap();
        c.write_all(&bytes).unwrap();
    }
    let expected = [
        ResponseCode::NoError,
        ResponseCode::NXDomain,
        ResponseCode::NoError,
    ];
    for (q, rcode) in queries.iter().zip(expected) {
        let mut len = [0u8; 2];
        c.read_exact(&mut len).unwrap();
        let mut body = vec![0u8; u16::from_be_bytes(len) as usize];
        c.read_exact(&mut body).unwrap();
        let a = hickory_proto::op::Message::from_vec(&body).unwrap();
        assert_eq!((a.metadata.id, a.metadata.response_code), (q.metadata.id, rcode));
    }
    s.stop().await;
}
