//! The server's Prometheus metrics, all named `scalestack_dns_*`.

use crate::answer::{Answer, From, LocatedBy, Transport};
use crate::geo::GeoMap;
use hickory_proto::op::ResponseCode;
use prometheus::{IntCounter, IntCounterVec, IntGaugeVec, Opts};

/// Counters shared by the answering threads.
pub struct Metrics {
    pub registry: telemetry::Registry,
    queries: IntCounterVec,
    located: IntCounterVec,
    limited: IntCounterVec,
    pub site_up: IntGaugeVec,
    pub site_changes: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = telemetry::Registry::new();
        let r = registry.component("scalestack_dns");
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            r.register(Box::new(c.clone())).expect("registered once");
            c
        };
        let queries = counter(
            "queries_total",
            "Answers sent (or limited), by transport, query type, response code, and for geo names the client's region and the site chosen (\"-\" otherwise).",
            &["transport", "qtype", "rcode", "region", "site"],
        );
        let located = counter(
            "located_total",
            "Geo answers by what located the client: the EDNS client subnet (ecs) or the source address (source).",
            &["by"],
        );
        let limited = counter(
            "rate_limited_total",
            "Answers held back by response rate limiting: dropped, or slipped (sent empty and truncated).",
            &["verdict"],
        );
        let site_changes = counter(
            "site_changes_total",
            "Health changes of a site, by the state it went to.",
            &["site", "to"],
        );
        let site_up = IntGaugeVec::new(
            Opts::new(
                "site_up",
                "1 while the site's load balancer passes its health checks.",
            ),
            &["site"],
        )
        .expect("valid metric");
        r.register(Box::new(site_up.clone())).expect("registered once");
        Metrics {
            registry,
            queries,
            located,
            limited,
            site_up,
            site_changes,
        }
    }

    /// Counts one answer. A cached answer's counters are looked up once,
    /// at its first count, and kept with it.
    pub fn answered(&self, geo: &GeoMap, transport: Transport, a: &Answer) {
        match &a.from {
            From::Cache(c) => c.counters.get_or_init(|| self.counters(geo, transport, a)).inc(),
            From::Built(_) => self.counters(geo, transport, a).inc(),
        }
    }

    fn counters(&self, geo: &GeoMap, transport: Transport, a: &Answer) -> Counters {
        let qtype = a.qtype.map(|t| t.to_string()).unwrap_or_else(|| "-".into());
        let (region, site, located) = match a.geo {
            Some((location, site, by)) => {
                let by = match by {
                    LocatedBy::Ecs => "ecs",
                    LocatedBy::Source => "source",
                };
                (
                    geo.regions[location.region].as_str(),
                    geo.sites[site].as_str(),
                    Some(self.located.with_label_values(&[by])),
                )
            }
            None => ("-", "-", None),
        };
        let transport = match transport {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        };
        Counters {
            query: self
                .queries
                .with_label_values(&[transport, &qtype, rcode_name(a.rcode), region, site]),
            located,
        }
    }

    /// Counts one answer held back by rate limiting.
    pub fn limited(&self, slipped: bool) {
        self.limited
            .with_label_values(&[if slipped { "slipped" } else { "dropped" }])
            .inc();
    }
}

/// The counters one answer increments.
pub struct Counters {
    query: IntCounter,
    located: Option<IntCounter>,
}

impl Counters {
    fn inc(&self) {
        self.query.inc();
        if let Some(l) = &self.located {
            l.inc();
        }
    }
}

/// The response code as dig prints it.
pub fn rcode_name(rcode: ResponseCode) -> &'static str {
    match rcode {
        ResponseCode::NoError => "NOERROR",
        ResponseCode::FormErr => "FORMERR",
        ResponseCode::ServFail => "SERVFAIL",
        ResponseCode::NXDomain => "NXDOMAIN",
        ResponseCode::NotImp => "NOTIMP",
        ResponseCode::Refused => "REFUSED",
        ResponseCode::BADVERS => "BADVERS",
        _ => "OTHER",
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
