//! From a query's bytes to the answer's bytes: the authoritative logic of
//! the zone, with no socket. Names are matched case-insensitively and the
//! question is echoed as asked; `www` and `cdn` are answered with the
//! chosen site's addresses; names outside the zone are REFUSED (no
//! recursion), a missing name is NXDOMAIN and a missing type NODATA, both
//! with the SOA in the authority section; EDNS gets an OPT back, an unknown
//! EDNS version BADVERS and a malformed client subnet FORMERR; an answer
//! larger than the client can take goes out truncated, so it retries over
//! TCP. Anything that does not parse gets FORMERR, or nothing when not even
//! a header is there.

use crate::config::DnsConfig;
use crate::geo::{GeoMap, Location, SiteMask};
use hickory_proto::op::{Edns, Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsCode, EdnsOption};
use hickory_proto::rr::rdata::{A, AAAA, NS, SOA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;

/// How the query came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// Where the location of a geo answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocatedBy {
    /// The EDNS Client Subnet option (RFC 7871).
    Ecs,
    /// The packet's source address.
    Source,
}

/// An answer ready to send, and what the metrics and the rate limiter need
/// to know of it.
pub struct Answer {
    pub bytes: Vec<u8>,
    pub rcode: ResponseCode,
    /// The question's type (None when there was no usable question).
    pub qtype: Option<RecordType>,
    /// For `www` and `cdn`: the client's location, the site chosen and how
    /// the client was located.
    pub geo: Option<(Location, usize, LocatedBy)>,
    /// Identifies the answer for rate limiting: its name, type and code.
    pub rrl_key: u64,
    pub(crate) from: From,
}

/// Where an answer came from.
pub(crate) enum From {
    /// The full path: the message built.
    Built(Message),
    /// The answer cache ([`crate::fast`]).
    Cache(std::sync::Arc<crate::fast::Cached>),
}

impl Answer {
    /// The same answer, empty and truncated (TC=1): what rate limiting
    /// "slips" to a client, and what goes out when the answer is too big.
    pub fn truncated(&self) -> Vec<u8> {
        match &self.from {
            From::Built(m) => m.truncate().to_vec().unwrap_or_default(),
            From::Cache(c) => c.truncated_like(&self.bytes),
        }
    }

    pub(crate) fn meta(&self) -> crate::fast::Meta {
        crate::fast::Meta {
            rcode: self.rcode,
            qtype: self.qtype,
            geo: self.geo,
            rrl_key: self.rrl_key,
        }
    }

    pub(crate) fn from_cache(bytes: Vec<u8>, cached: std::sync::Arc<crate::fast::Cached>) -> Answer {
        let m = cached.meta.clone();
        Answer {
            bytes,
            rcode: m.rcode,
            qtype: m.qtype,
            geo: m.geo,
            rrl_key: m.rrl_key,
            from: From::Cache(cached),
        }
    }

    /// Whether the answer ends with a client subnet option (the OPT is the
    /// last record and the subnet its only option).
    pub(crate) fn ends_with_subnet(&self) -> bool {
        match &self.from {
            From::Built(m) => m
                .edns
                .as_ref()
                .is_some_and(|e| e.option(EdnsCode::Subnet).is_some()),
            From::Cache(_) => false,
        }
    }
}

/// What a name of the zone is.
enum Owner<'a> {
    Apex,
    Www,
    Cdn,
    NameServer(&'a [IpAddr]),
    Missing,
}

/// The zone and everything it answers from.
pub struct Zone {
    name: Name,
    /// The zone's name in wire form, lower case.
    wire: Vec<u8>,
    soa: Record,
    ns: Vec<Record>,
    /// Name server label (lower case) → addresses.
    glue: HashMap<String, Vec<IpAddr>>,
    /// Per site: `www` addresses, `cdn` addresses.
    sites: Vec<(Vec<IpAddr>, Vec<IpAddr>)>,
    pub geo: GeoMap,
    ttl: u32,
    static_ttl: u32,
    max_udp_payload: u16,
}

impl Zone {
    /// The zone of a validated configuration.
    pub fn new(config: &DnsConfig) -> anyhow::Result<Zone> {
        let name = config.zone_name()?;
        let label = |l: &str| -> anyhow::Result<Name> { Ok(Name::from_ascii(l)?.append_domain(&name)?) };
        let first_ns = label(&config.name_servers[0].name)?;
        let soa = SOA::new(
            first_ns,
            label("hostmaster")?,
            1,
            3600,
            600,
            86400,
            config.static_ttl,
        );
        let soa = Record::from_rdata(name.clone(), config.static_ttl, RData::SOA(soa));
        let mut ns = Vec::new();
        let mut glue: HashMap<String, Vec<IpAddr>> = HashMap::new();
        for s in &config.name_servers {
            let host = label(&s.name)?;
            ns.push(Record::from_rdata(
                name.clone(),
                config.static_ttl,
                RData::NS(NS(host)),
            ));
            glue.entry(s.name.to_ascii_lowercase()).or_default().push(s.addr);
        }
        let wire = hickory_proto::serialize::binary::BinEncodable::to_bytes(&name)?;
        Ok(Zone {
            wire,
            soa,
            ns,
            glue,
            sites: config
                .sites
                .iter()
                .map(|s| (s.www.clone(), s.cdn.clone()))
                .collect(),
            geo: GeoMap::new(config),
            ttl: config.ttl,
            static_ttl: config.static_ttl,
            max_udp_payload: config.max_udp_payload,
            name,
        })
    }

    /// The answer to `packet` from `source`, with the sites in `up` (and
    /// `last_good`, see [`GeoMap::choose`]); None when nothing must be sent
    /// (not a query, or shorter than a header).
    pub fn respond(
        &self,
        packet: &[u8],
        source: IpAddr,
        transport: Transport,
        (up, last_good): (SiteMask, SiteMask),
    ) -> Option<Answer> {
        if packet.len() < 12 || packet[2] & 0x80 != 0 {
            return None;
        }
        let request = match Message::from_vec(packet) {
            Ok(m) => m,
            Err(_) => {
                let id = u16::from_be_bytes([packet[0], packet[1]]);
                let op = OpCode::from_u8((packet[2] >> 3) & 0x0f);
                let mut response = Message::error_msg(id, op, ResponseCode::FormErr);
                response.metadata.recursion_desired = packet[2] & 1 != 0;
                return Some(self.finish(response, None, None, 0));
            }
        };
        let mut response = Message::new(
            request.metadata.id,
            MessageType::Response,
            request.metadata.op_code,
        );
        response.metadata = Metadata::response_from_request(&request.metadata);
        response.queries = request.queries.clone();
        let client_max = request.edns.as_ref().map(|e| e.max_payload().max(512));
        if let Some(edns) = &request.edns {
            let mut opt = Edns::new();
            opt.set_max_payload(self.max_udp_payload);
            response.set_edns(opt);
            if edns.version() > 0 {
                return Some(self.refuse(response, ResponseCode::BADVERS, transport, client_max));
            }
        }
        if request.metadata.op_code != OpCode::Query {
            return Some(self.refuse(response, ResponseCode::NotImp, transport, client_max));
        }
        let [query] = request.queries.as_slice() else {
            return Some(self.refuse(response, ResponseCode::FormErr, transport, client_max));
        };
        let ecs = match request.edns.as_ref().and_then(|e| e.option(EdnsCode::Subnet)) {
            Some(EdnsOption::Subnet(s)) => match valid_subnet(s) {
                Some(s) => Some(s),
                None => return Some(self.refuse(response, ResponseCode::FormErr, transport, client_max)),
            },
            _ => None,
        };
        let qtype = query.query_type();
        let qname = query.name();
        let lower = qname.to_lowercase();
        let key = {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (&lower, u16::from(qtype)).hash(&mut h);
            h.finish()
        };
        if query.query_class() != DNSClass::IN
            || !self.name.zone_of(&lower)
            || matches!(qtype, RecordType::AXFR | RecordType::IXFR)
        {
            let mut a = self.refuse(response, ResponseCode::Refused, transport, client_max);
            a.qtype = Some(qtype);
            a.rrl_key = key;
            return Some(a);
        }
        response.metadata.authoritative = true;
        let owner = self.owner(&lower);
        let mut geo = None;
        let mut scope = 0;
        let mut records = Vec::new();
        let owner_name = qname.clone();
        let addresses = |addrs: &[IpAddr], ttl: u32, records: &mut Vec<Record>| {
            for &addr in addrs {
                let rdata = match addr {
                    IpAddr::V4(a) if matches!(qtype, RecordType::A | RecordType::ANY) => RData::A(A(a)),
                    IpAddr::V6(a) if matches!(qtype, RecordType::AAAA | RecordType::ANY) => {
                        RData::AAAA(AAAA(a))
                    }
                    _ => continue,
                };
                records.push(Record::from_rdata(owner_name.clone(), ttl, rdata));
            }
        };
        match owner {
            Owner::Apex => {
                if matches!(qtype, RecordType::SOA | RecordType::ANY) {
                    records.push(self.soa.clone());
                }
                if matches!(qtype, RecordType::NS | RecordType::ANY) {
                    records.extend(self.ns.iter().cloned());
                    for (label, addrs) in &self.glue {
                        let host = Name::from_ascii(label)
                            .and_then(|l| l.append_domain(&self.name))
                            .ok();
                        for &addr in addrs {
                            let rdata = match addr {
                                IpAddr::V4(a) => RData::A(A(a)),
                                IpAddr::V6(a) => RData::AAAA(AAAA(a)),
                            };
                            if let Some(host) = &host {
                                response.additionals.push(Record::from_rdata(
                                    host.clone(),
                                    self.static_ttl,
                                    rdata,
                                ));
                            }
                        }
                    }
                }
            }
            Owner::Www | Owner::Cdn => {
                let (location, by) = match ecs {
                    Some(s) if s.source_prefix() > 0 => (self.geo.locate(s.addr()), LocatedBy::Ecs),
                    _ => (self.geo.locate(source), LocatedBy::Source),
                };
                let site = self.geo.choose(location.region, up, last_good);
                let (www, cdn) = &self.sites[site];
                let addrs = if matches!(owner, Owner::Www) { www } else { cdn };
                addresses(addrs, self.ttl, &mut records);
                geo = Some((location, site, by));
                scope = location.scope;
            }
            Owner::NameServer(addrs) => addresses(addrs, self.static_ttl, &mut records),
            Owner::Missing => response.metadata.response_code = ResponseCode::NXDomain,
        }
        if records.is_empty() {
            // NXDOMAIN or NODATA: the SOA says for how long to remember it.
            response.authorities.push(self.soa.clone());
        }
        response.answers = records;
        if let (Some(s), Some(edns)) = (ecs, response.edns.as_mut()) {
            let scope = if s.source_prefix() == 0 { 0 } else { scope };
            edns.options_mut().insert(EdnsOption::Subnet(ClientSubnet::new(
                s.addr(),
                s.source_prefix(),
                scope,
            )));
        }
        let mut answer = self.finish(response, Some(qtype), geo, key);
        if answer.bytes.len() > limit(transport, client_max, self.max_udp_payload) {
            answer.bytes = answer.truncated();
        }
        Some(answer)
    }

    /// Whether `name` (wire form, lower case) is `www` or `cdn` of the zone.
    pub(crate) fn is_geo_wire(&self, name: &[u8]) -> bool {
        let label = usize::from(name.first().copied().unwrap_or(0));
        name.len() == 1 + label + self.wire.len()
            && name.ends_with(&self.wire)
            && matches!(&name[1..1 + label], b"www" | b"cdn")
    }

    /// The largest answer a client offering `edns` (None: no EDNS) takes.
    pub(crate) fn limit(&self, transport: Transport, edns: Option<u16>) -> usize {
        limit(transport, edns.map(|e| e.max(512)), self.max_udp_payload)
    }

    fn owner(&self, lower: &Name) -> Owner<'_> {
        let extra = lower.num_labels() - self.name.num_labels();
        if extra == 0 {
            return Owner::Apex;
        }
        if extra > 1 {
            return Owner::Missing;
        }
        let label = lower.iter().next().unwrap_or_default();
        match label {
            b"www" => Owner::Www,
            b"cdn" => Owner::Cdn,
            l => std::str::from_utf8(l)
                .ok()
                .and_then(|l| self.glue.get(l))
                .map_or(Owner::Missing, |a| Owner::NameServer(a)),
        }
    }

    /// An error answer: the question echoed, no records.
    fn refuse(
        &self,
        mut response: Message,
        rcode: ResponseCode,
        transport: Transport,
        client_max: Option<u16>,
    ) -> Answer {
        response.metadata.response_code = rcode;
        let mut a = self.finish(response, None, None, u64::from(u16::from(rcode)));
        if a.bytes.len() > limit(transport, client_max, self.max_udp_payload) {
            a.bytes = a.truncated();
        }
        a
    }

    fn finish(
        &self,
        message: Message,
        qtype: Option<RecordType>,
        geo: Option<(Location, usize, LocatedBy)>,
        rrl_key: u64,
    ) -> Answer {
        let bytes = message.to_vec().unwrap_or_else(|_| {
            // Cannot happen for what this zone builds; answer SERVFAIL
            // rather than nothing.
            let mut m = Message::error_msg(
                message.metadata.id,
                message.metadata.op_code,
                ResponseCode::ServFail,
            );
            m.queries = message.queries.clone();
            m.to_vec().unwrap_or_default()
        });
        Answer {
            bytes,
            rcode: message.metadata.response_code,
            qtype,
            geo,
            rrl_key,
            from: From::Built(message),
        }
    }
}

/// The largest answer the client takes: 512 without EDNS, else what it
/// offers (at least 512) up to our own ceiling; TCP takes any size.
fn limit(transport: Transport, client_max: Option<u16>, ours: u16) -> usize {
    match transport {
        Transport::Tcp => usize::from(u16::MAX),
        Transport::Udp => usize::from(client_max.map_or(512, |c| c.min(ours))),
    }
}

/// The client subnet when well formed (RFC 7871 §7.1.2): a source prefix
/// no longer than the family's width, a zero scope in a query, and no
/// address bits set past the source prefix.
fn valid_subnet(s: &ClientSubnet) -> Option<&ClientSubnet> {
    let width = if s.addr().is_ipv4() { 32 } else { 128 };
    (s.source_prefix() <= width
        && s.scope_prefix() == 0
        && crate::geo::mask(s.addr(), s.source_prefix()) == s.addr())
    .then_some(s)
}
