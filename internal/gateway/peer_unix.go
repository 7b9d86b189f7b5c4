//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package gateway

import (
	"errors"
	"net"
	"syscall"
)

// peerGone reports whether the other end of conn closed or reset it,
// without blocking and without consuming anything: it peeks at the socket.
func peerGone(conn net.Conn) bool {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return true
	}
	gone := false
	err = rc.Read(func(fd uintptr) bool {
		var b [1]byte
		n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		switch {
		case errors.Is(err, syscall.EAGAIN), errors.Is(err, syscall.EINTR): // open, nothing sent
		case err != nil: // reset
			gone = true
		case n == 0: // closed
			gone = true
		}
		return true
	})
	return gone || err != nil
}
