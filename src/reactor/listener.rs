//! The listening socket: created through `socket2` so its options are set
//! before `bind` (address reuse, a deep backlog), then handed to mio.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Accept queue depth. The kernel caps it at `net.core.somaxconn`; asking for
/// more lets an operator raise that sysctl without rebuilding.
const BACKLOG: i32 = 4096;

/// Binds a non-blocking listener on `addr`.
pub fn bind(addr: SocketAddr) -> io::Result<mio::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // A restarted daemon can bind while old connections sit in TIME_WAIT.
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false).ok();
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(mio::net::TcpListener::from_std(socket.into()))
}
