package lane

import (
	"net"
	"syscall"
)

// hasUnreadBytes reports whether the kernel holds bytes (or an end of
// stream) on c that nobody asked for: an idle upstream connection in that
// state must not carry the next request. One non-blocking MSG_PEEK, no
// deadline changes.
func hasUnreadBytes(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return true
	}
	var b [1]byte
	unread := false
	err = rc.Read(func(fd uintptr) bool {
		n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		// n > 0: surplus bytes; n == 0 without error: the peer closed.
		unread = err == nil || n > 0
		return true
	})
	return unread || err != nil
}
