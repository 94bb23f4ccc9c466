//go:build !unix

package nowait

import (
	"errors"
	"net"
	"syscall"
)

// Wrap returns c: raw system calls are not available here.
func Wrap(c net.Conn) net.Conn { return c }

// Writev is not available here: it takes nothing, and callers leave
// everything to their writer goroutine.
func Writev(syscall.RawConn, [][]byte) (int, error) {
	return 0, errors.ErrUnsupported
}
