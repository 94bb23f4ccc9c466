//go:build !unix

package net

import (
	"errors"
	"syscall"
)

// writevNow is not available here: every frame goes through the lane's
// writer goroutine.
func writevNow(syscall.RawConn, [][]byte) (int, error) {
	return 0, errors.ErrUnsupported
}
