//go:build !linux

package lane

import "net"

// hasUnreadBytes cannot look at the socket without reading from it here;
// only bytes already buffered are caught (see h1Client.put).
func hasUnreadBytes(net.Conn) bool { return false }
