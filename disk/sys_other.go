//go:build !linux

package disk

import (
	"errors"
	"os"
)

var errNoPrealloc = errors.New("preallocation not supported")

func preallocate(f *os.File, off, n int64) error { return errNoPrealloc }

func adviseRandom(f *os.File) {}

func writeCachedAt(f *os.File, b []byte, off int64) error {
	_, err := f.WriteAt(b, off)
	return err
}

func fdatasync(f *os.File) error { return f.Sync() }

func fsFree(path string) (uint64, error) {
	return 0, errors.ErrUnsupported
}

func fsTotal(path string) (uint64, error) {
	return 0, errors.ErrUnsupported
}

// readCached cannot tell cached pages from others here: it always
// reports errWouldBlock, so callers take their blocking path.
func readCached(f *os.File, b []byte, off int64) (int, error) { return 0, errWouldBlock }

func startWriteback(f *os.File, off, n int64) {}
