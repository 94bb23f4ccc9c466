//go:build !linux

package disk

import (
	"errors"
	"os"
)

var errNoPrealloc = errors.New("preallocation not supported")

func preallocate(f *os.File, off, n int64) error { return errNoPrealloc }

func fdatasync(f *os.File) error { return f.Sync() }

func fsFree(path string) (uint64, error) {
	return 0, errors.ErrUnsupported
}
