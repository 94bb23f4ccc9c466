//go:build unix

package net

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// writevNow makes one writev(2) of iov on rc's descriptor without waiting
// for the socket to become writable; it returns the bytes written.
func writevNow(rc syscall.RawConn, iov [][]byte) (int, error) {
	var n int
	var werr error
	err := rc.Write(func(fd uintptr) bool {
		n, werr = unix.Writev(int(fd), iov)
		return true // never wait: what is left goes to the writer
	})
	if err != nil {
		return 0, err
	}
	return n, werr
}
