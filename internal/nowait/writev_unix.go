//go:build unix

package nowait

import "syscall"

// Writev makes one writev(2) of iov on rc's descriptor without waiting for
// the socket to become writable, and returns the bytes it took (0 when
// the socket is full or broken; the error says which). Like Conn's, the
// call is a raw system call.
func Writev(rc syscall.RawConn, iov [][]byte) (int, error) {
	var n int
	var werr error
	err := rc.Write(func(fd uintptr) bool {
		n, werr = rawWritev(fd, iov)
		return true // never wait: what is left goes to a writer
	})
	if err != nil {
		return 0, err
	}
	return n, werr
}
