//! Where a client is and which site it gets: the pure decision core of the
//! geoDNS, with no sockets and no clock. [`GeoMap::locate`] finds a client
//! address's region by the longest matching network prefix;
//! [`GeoMap::choose`] picks the region's nearest site among those up.

use crate::config::DnsConfig;
use std::collections::HashMap;
use std::net::IpAddr;
use std::str::FromStr;

/// An IP network such as `127.0.1.0/24`, its host bits zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Network {
    /// The address with every bit past `prefix` cleared.
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Network {
    /// The network of `prefix` bits holding `addr` (`prefix` capped at the
    /// family's width).
    pub fn of(addr: IpAddr, prefix: u8) -> Network {
        let prefix = prefix.min(width(addr));
        Network {
            addr: mask(addr, prefix),
            prefix,
        }
    }

    /// Whether `addr` is inside.
    pub fn contains(&self, addr: IpAddr) -> bool {
        addr.is_ipv4() == self.addr.is_ipv4() && mask(addr, self.prefix) == self.addr
    }
}

impl FromStr for Network {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a network like 10.1.0.0/16 or 2001:db8::/32");
        let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if prefix > width(addr) {
            return Err(bad());
        }
        if mask(addr, prefix) != addr {
            return Err(format!("{s:?} has host bits set past /{prefix}"));
        }
        Ok(Network { addr, prefix })
    }
}

fn width(addr: IpAddr) -> u8 {
    if addr.is_ipv4() {
        32
    } else {
        128
    }
}

/// `addr` with every bit past `prefix` cleared.
pub fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let keep = u32::MAX.checked_shl(32 - u32::from(prefix.min(32))).unwrap_or(0);
            IpAddr::V4((bits & keep).into())
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let keep = u128::MAX
                .checked_shl(128 - u32::from(prefix.min(128)))
                .unwrap_or(0);
            IpAddr::V6((bits & keep).into())
        }
    }
}

/// Hash maps keyed by FxHash (rustc's): the keys here are the server's
/// own (addresses, answer keys), not chosen by clients in a way that could
/// flood one bucket (a client picks only its own address and name, and the
/// tables are bounded), and SipHash showed up in the answering thread's
/// profile.
pub type FxBuild = rustc_hash::FxBuildHasher;

/// Where a client was placed: its region and the prefix length of the
/// network that decided it (the ECS scope of the answer; 0 for the default
/// region, which no network decided).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub region: usize,
    pub scope: u8,
}

/// A set of sites as a bit mask (bit i = the configuration's i-th site).
pub type SiteMask = u64;

/// The networks of every region, and every region's sites by preference.
#[derive(Debug, Clone)]
pub struct GeoMap {
    /// Per prefix length present, longest first: network address → region.
    v4: Vec<(u8, HashMap<IpAddr, usize, FxBuild>)>,
    v6: Vec<(u8, HashMap<IpAddr, usize, FxBuild>)>,
    default_region: usize,
    /// Per region: its sites nearest first, then the unlisted ones in
    /// configuration order.
    order: Vec<Vec<usize>>,
    /// Region names, by index.
    pub regions: Vec<String>,
    /// Site names, by index.
    pub sites: Vec<String>,
}

impl GeoMap {
    /// Builds the map of a validated configuration.
    pub fn new(config: &DnsConfig) -> GeoMap {
        let site_index = |name: &str| config.sites.iter().position(|s| s.name == name);
        let mut v4: HashMap<u8, HashMap<IpAddr, usize, FxBuild>> = HashMap::new();
        let mut v6: HashMap<u8, HashMap<IpAddr, usize, FxBuild>> = HashMap::new();
        let mut order = Vec::new();
        for (r, region) in config.regions.iter().enumerate() {
            for n in &region.networks {
                let Ok(net) = n.parse::<Network>() else { continue };
                let by_len = if net.addr.is_ipv4() { &mut v4 } else { &mut v6 };
                // The first region to claim a network keeps it.
                by_len.entry(net.prefix).or_default().entry(net.addr).or_insert(r);
            }
            let mut sites: Vec<usize> = region.sites.iter().filter_map(|s| site_index(s)).collect();
            let unlisted: Vec<usize> = (0..config.sites.len()).filter(|i| !sites.contains(i)).collect();
            sites.extend(unlisted);
            order.push(sites);
        }
        let longest_first = |m: HashMap<u8, HashMap<IpAddr, usize, FxBuild>>| {
            let mut v: Vec<_> = m.into_iter().collect();
            v.sort_by_key(|b| std::cmp::Reverse(b.0));
            v
        };
        let default_region = config
            .default_region
            .as_ref()
            .and_then(|d| config.regions.iter().position(|r| &r.name == d))
            .unwrap_or(0);
        GeoMap {
            v4: longest_first(v4),
            v6: longest_first(v6),
            default_region,
            order,
            regions: config.regions.iter().map(|r| r.name.clone()).collect(),
            sites: config.sites.iter().map(|s| s.name.clone()).collect(),
        }
    }

    /// The region of `addr`: the longest network holding it, else the
    /// default region with scope 0.
    pub fn locate(&self, addr: IpAddr) -> Location {
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(addr),
            v4 => v4,
        };
        let table = if addr.is_ipv4() { &self.v4 } else { &self.v6 };
        for (prefix, nets) in table {
            if let Some(&region) = nets.get(&mask(addr, *prefix)) {
                return Location {
                    region,
                    scope: *prefix,
                };
            }
        }
        Location {
            region: self.default_region,
            scope: 0,
        }
    }

    /// The site for `region`: its nearest site in `up`; when no site is
    /// up, its nearest in `last_good` (the sites up when some last were),
    /// so that a health-check outage does not take DNS down with it; with
    /// neither, its nearest site.
    pub fn choose(&self, region: usize, up: SiteMask, last_good: SiteMask) -> usize {
        let order = &self.order[region];
        let pick = |mask: SiteMask| order.iter().copied().find(|&s| mask & (1 << s) != 0);
        pick(up).or_else(|| pick(last_good)).unwrap_or(order[0])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{RegionSpec, SiteSpec};

    fn config() -> DnsConfig {
        let site = |name: &str, a: [u8; 4]| SiteSpec {
            name: name.into(),
            www: vec![a.into()],
            cdn: vec![],
            health: None,
        };
        let region = |name: &str, nets: &[&str], sites: &[&str]| RegionSpec {
            name: name.into(),
            networks: nets.iter().map(|s| s.to_string()).collect(),
            sites: sites.iter().map(|s| s.to_string()).collect(),
        };
        DnsConfig {
            sites: vec![
                site("dc1", [127, 0, 1, 1]),
                site("dc2", [127, 0, 2, 1]),
                site("dc3", [127, 0, 3, 1]),
            ],
            regions: vec![
                region("east", &["127.0.1.0/24", "10.0.0.0/8"], &["dc1", "dc2"]),
                region(
                    "west",
                    &["127.0.2.0/24", "10.9.0.0/16", "2001:db8::/32"],
                    &["dc2", "dc1"],
                ),
            ],
            ..DnsConfig::default()
        }
    }

    #[test]
    fn networks_parse_strictly() {
        assert_eq!(
            "10.1.0.0/16".parse::<Network>().unwrap(),
            Network::of([10, 1, 2, 3].into(), 16)
        );
        assert!("10.1.0.1/16"
            .parse::<Network>()
            .unwrap_err()
            .contains("host bits"));
        assert!("10.1.0.0/33".parse::<Network>().is_err());
        assert!("10.1.0.0".parse::<Network>().is_err());
        assert!("::/0"
            .parse::<Network>()
            .unwrap()
            .contains("2001:db8::1".parse().unwrap()));
        assert!(!"::/0".parse::<Network>().unwrap().contains([1, 2, 3, 4].into()));
        assert!("0.0.0.0/0"
            .parse::<Network>()
            .unwrap()
            .contains([1, 2, 3, 4].into()));
    }

    #[test]
    fn the_longest_prefix_wins() {
        let m = GeoMap::new(&config());
        assert_eq!(m.locate([127, 0, 1, 9].into()), Location { region: 0, scope: 24 });
        assert_eq!(m.locate([127, 0, 2, 9].into()), Location { region: 1, scope: 24 });
        assert_eq!(m.locate([10, 1, 2, 3].into()), Location { region: 0, scope: 8 });
        assert_eq!(m.locate([10, 9, 2, 3].into()), Location { region: 1, scope: 16 });
        assert_eq!(
            m.locate("2001:db8::5".parse().unwrap()),
            Location { region: 1, scope: 32 }
        );
        assert_eq!(
            m.locate("::ffff:127.0.2.7".parse().unwrap()),
            Location { region: 1, scope: 24 }
        );
        // Nowhere: the default region (the first), decided by no network.
        assert_eq!(m.locate([192, 0, 2, 1].into()), Location { region: 0, scope: 0 });
    }

    #[test]
    fn the_nearest_site_up_is_chosen() {
        let m = GeoMap::new(&config());
        let all = 0b111;
        assert_eq!(m.choose(0, all, all), 0);
        assert_eq!(m.choose(1, all, all), 1);
        // dc1 down: east goes to dc2; west keeps dc2.
        assert_eq!(m.choose(0, 0b110, all), 1);
        // dc1 and dc2 down: both regions go to dc3, which neither lists.
        assert_eq!(m.choose(0, 0b100, all), 2);
        assert_eq!(m.choose(1, 0b100, all), 2);
        // Every site down: the last known good set answers.
        assert_eq!(m.choose(0, 0, 0b010), 1);
        // Nothing ever up: the nearest.
        assert_eq!(m.choose(1, 0, 0), 1);
    }
}
