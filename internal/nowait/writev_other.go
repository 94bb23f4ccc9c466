//go:build !unix

package nowait

import (
	"errors"
	"syscall"
)

// Writev is not available here: it takes nothing, and callers leave
// everything to their writer goroutine.
func Writev(syscall.RawConn, [][]byte) (int, error) {
	return 0, errors.ErrUnsupported
}
