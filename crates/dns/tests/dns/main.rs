//! The geoDNS server on real sockets, asked by real clients: `dig` (Debian's
//! bind9-dnsutils) and hickory-proto's messages over UDP and TCP.

mod fuzz;
mod health;
mod helpers;
mod protocol;
