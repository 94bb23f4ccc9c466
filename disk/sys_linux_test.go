//go:build linux

package disk

import (
	"fmt"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// processCPU is the CPU time (user + system) used so far by the whole
// process, all goroutines and threads included.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// fileID identifies the file f refers to: its inode number and, where the
// filesystem records it, its birth time (inode numbers are reused).
func fileID(f *os.File) (string, error) {
	var stx unix.Statx_t
	if err := unix.Statx(int(f.Fd()), "", unix.AT_EMPTY_PATH, unix.STATX_INO|unix.STATX_BTIME, &stx); err != nil {
		return "", &os.PathError{Op: "statx", Path: f.Name(), Err: err}
	}
	if stx.Mask&unix.STATX_BTIME == 0 {
		return fmt.Sprint(stx.Ino), nil
	}
	return fmt.Sprint(stx.Ino, stx.Btime.Sec, stx.Btime.Nsec), nil
}
