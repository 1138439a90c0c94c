//! One UDP answering thread: blocking `recvmmsg` of up to [`BATCH`]
//! queries at once, every one answered, then one `sendmmsg` of the
//! answers, as gdnsd and Knot do. Under load a system call carries many
//! packets instead of one; with a single query waiting it returns at once
//! (`MSG_WAITFORONE`), so batching adds no latency.

use crate::answer::Transport;
use crate::fast::AnswerCache;
use crate::rrl::Verdict;
use crate::Shared;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// Datagrams per system call at most.
const BATCH: usize = 32;
/// The largest query read; a longer one is cut and gets FORMERR.
const MAX_QUERY: usize = 4096;

/// Serves `socket` until the stop flag is set (checked at every batch and
/// at every read timeout of the socket).
pub(crate) fn serve(socket: UdpSocket, shared: &Shared) {
    let fd = socket.as_raw_fd();
    let mut bufs = vec![[0u8; MAX_QUERY]; BATCH];
    let mut cache = AnswerCache::default();
    // SAFETY: all-zero is a valid value of these plain C structs.
    let mut peers: Vec<libc::sockaddr_storage> = vec![unsafe { std::mem::zeroed() }; BATCH];
    let mut iovecs: Vec<libc::iovec> = vec![unsafe { std::mem::zeroed() }; BATCH];
    let mut headers: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; BATCH];
    let mut answers: Vec<(usize, Vec<u8>)> = Vec::with_capacity(BATCH);
    while !shared.stop.load(Ordering::Relaxed) {
        for i in 0..BATCH {
            iovecs[i] = libc::iovec {
                iov_base: bufs[i].as_mut_ptr().cast(),
                iov_len: MAX_QUERY,
            };
            let h = &mut headers[i].msg_hdr;
            h.msg_name = (&mut peers[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut iovecs[i];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
            headers[i].msg_len = 0;
        }
        // SAFETY: every header points at a buffer, an iovec and an address
        // of ours that outlive the call; BATCH headers are there.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                headers.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::Interrupted
            ) {
                tracing::debug!(error = %e, "udp receive failed");
            }
            continue;
        }
        answers.clear();
        for i in 0..n as usize {
            let len = headers[i].msg_len as usize;
            let Some(peer) = peer_addr(&peers[i], headers[i].msg_hdr.msg_namelen) else {
                continue;
            };
            if let Some(bytes) = answer(shared, &mut cache, &bufs[i][..len], peer) {
                answers.push((i, bytes));
            }
        }
        send_all(fd, &mut headers, &mut iovecs, &mut peers, &answers);
    }
}

/// The bytes to send for one query, after rate limiting (None: nothing).
fn answer(shared: &Shared, cache: &mut AnswerCache, query: &[u8], peer: SocketAddr) -> Option<Vec<u8>> {
    let answer = shared
        .zone
        .respond_cached(cache, query, peer.ip(), Transport::Udp, shared.states.load())?;
    let verdict = match &shared.limiter {
        Some(l) => l.check(peer.ip(), answer.rrl_key, Instant::now()),
        None => Verdict::Send,
    };
    let bytes = match verdict {
        Verdict::Send => {
            shared.metrics.answered(&shared.zone.geo, Transport::Udp, &answer);
            return Some(answer.bytes);
        }
        Verdict::Slip => answer.truncated(),
        Verdict::Drop => {
            shared.metrics.limited(false);
            return None;
        }
    };
    shared.metrics.limited(true);
    shared.metrics.answered(&shared.zone.geo, Transport::Udp, &answer);
    Some(bytes)
}

/// Sends every answer to the peer its query came from, in as few
/// `sendmmsg` calls as the kernel takes.
fn send_all(
    fd: libc::c_int,
    headers: &mut [libc::mmsghdr],
    iovecs: &mut [libc::iovec],
    peers: &mut [libc::sockaddr_storage],
    answers: &[(usize, Vec<u8>)],
) {
    if answers.is_empty() {
        return;
    }
    // Reuse the receive headers: header k sends answer k to the address of
    // its query (peers[i] stays in place, so its length is what recvmmsg
    // wrote for query i).
    let mut out: Vec<libc::mmsghdr> = Vec::with_capacity(answers.len());
    for (k, (i, bytes)) in answers.iter().enumerate() {
        iovecs[k] = libc::iovec {
            iov_base: bytes.as_ptr() as *mut libc::c_void,
            iov_len: bytes.len(),
        };
        let mut h = headers[*i];
        h.msg_hdr.msg_name = (&mut peers[*i] as *mut libc::sockaddr_storage).cast();
        h.msg_hdr.msg_iov = &mut iovecs[k];
        h.msg_hdr.msg_iovlen = 1;
        h.msg_len = 0;
        out.push(h);
    }
    let mut sent = 0;
    while sent < out.len() {
        // SAFETY: the headers point at answers and addresses that outlive
        // the call.
        let n = unsafe {
            libc::sendmmsg(
                fd,
                out[sent..].as_mut_ptr(),
                (out.len() - sent) as libc::c_uint,
                0,
            )
        };
        if n <= 0 {
            let e = std::io::Error::last_os_error();
            tracing::debug!(error = %e, "udp send failed");
            // Skip the answer that failed; the client retries.
            sent += 1;
            continue;
        }
        sent += n as usize;
    }
}

/// The address the kernel wrote for a datagram.
fn peer_addr(storage: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let len = len as usize;
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET if len >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the kernel wrote a sockaddr_in (family AF_INET, long enough).
            let a = unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::from((ip, u16::from_be(a.sin_port))))
        }
        libc::AF_INET6 if len >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: the kernel wrote a sockaddr_in6 (family AF_INET6, long enough).
            let a = unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = std::net::Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::from((ip, u16::from_be(a.sin6_port))))
        }
        _ => None,
    }
}
