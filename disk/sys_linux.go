//go:build linux

package disk

import (
	"errors"
	"io"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// errNoPrealloc: the filesystem cannot preallocate.
var errNoPrealloc = errors.New("preallocation not supported")

// preallocate reserves [off, off+n) of f without changing its size.
func preallocate(f *os.File, off, n int64) error {
	if n <= 0 {
		return nil
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) {
		for {
			ferr = unix.Fallocate(int(fd), unix.FALLOC_FL_KEEP_SIZE, off, n)
			if ferr != unix.EINTR {
				break
			}
		}
	}); err != nil {
		return err
	}
	if errors.Is(ferr, unix.EOPNOTSUPP) || errors.Is(ferr, unix.ENOSYS) {
		return errNoPrealloc
	}
	if ferr != nil {
		return &os.PathError{Op: "fallocate", Path: f.Name(), Err: ferr}
	}
	return nil
}

// adviseRandom turns off readahead on an object's data file. Readahead
// fills the page cache with large folios, and on ext4 with large folios
// (recent kernels; 6.18 here) a 4 KiB write into a large folio walks
// every block of it: measured on ext4 here, a random 4 KiB pwrite into
// 1 MiB folios took 28-34 µs against 3.5-4.5 µs into 4 KiB ones. A VM's
// disk is read at random far more often than streamed, and a large read
// still reads what it asks for.
func adviseRandom(f *os.File) {
	rc, err := f.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) {
		_ = unix.Fadvise(int(fd), 0, 0, unix.FADV_RANDOM)
	})
}

// writeCachedAt writes b at off in f with raw pwrite(2) calls, for writes
// that land in the page cache of preallocated space (the journal buffer).
// A raw call skips the runtime's system-call bookkeeping, which wakes the
// runtime's parked monitor thread (sysmon) and sets it polling every 20 µs
// for a while: the journal buffer's write, once per 30 records of 4 KiB
// on a node's request path, was the cause of nearly all such wake-ups at
// QD1 (perf, sched_wakeup stacks). The price is that the thread keeps its
// P should the write ever wait (writeback throttling); the node's run is
// waiting for it either way.
func writeCachedAt(f *os.File, b []byte, off int64) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var werr error
	if err := rc.Control(func(fd uintptr) {
		for len(b) > 0 {
			n, _, e := syscall.RawSyscall6(syscall.SYS_PWRITE64, fd, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), uintptr(off), 0, 0)
			switch {
			case e == unix.EINTR:
				continue
			case e != 0:
				werr = e
				return
			case n == 0:
				werr = io.ErrShortWrite
				return
			}
			b, off = b[n:], off+int64(n)
		}
	}); err != nil {
		return err
	}
	if werr != nil {
		return &os.PathError{Op: "pwrite", Path: f.Name(), Err: werr}
	}
	return nil
}

// fdatasync flushes f's data and the metadata needed to read it back.
func fdatasync(f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		for {
			serr = unix.Fdatasync(int(fd))
			if serr != unix.EINTR {
				break
			}
		}
	}); err != nil {
		return err
	}
	if serr != nil {
		return &os.PathError{Op: "fdatasync", Path: f.Name(), Err: serr}
	}
	return nil
}

// fsFree returns the bytes available to unprivileged users on the
// filesystem holding path.
func fsFree(path string) (uint64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return 0, &os.PathError{Op: "statfs", Path: path, Err: err}
	}
	return st.Bavail * uint64(st.Bsize), nil
}

// fsTotal is the size of the filesystem holding path.
func fsTotal(path string) (uint64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return 0, &os.PathError{Op: "statfs", Path: path, Err: err}
	}
	return st.Blocks * uint64(st.Bsize), nil
}

// readCached reads len(b) bytes of f at off only if they are all in the
// page cache (preadv2 with RWF_NOWAIT); it never waits for the device.
// It returns the bytes read (short at the end of the file), or
// errWouldBlock.
func readCached(f *os.File, b []byte, off int64) (int, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return 0, err
	}
	var n int
	var rerr error
	iov := [][]byte{b}
	if err := rc.Control(func(fd uintptr) {
		for n < len(b) {
			iov[0] = b[n:]
			var k int
			k, rerr = unix.Preadv2(int(fd), iov, off+int64(n), unix.RWF_NOWAIT)
			if rerr == unix.EINTR {
				continue
			}
			if rerr != nil || k == 0 {
				break
			}
			n += k
		}
	}); err != nil {
		return 0, err
	}
	switch {
	case rerr == unix.EAGAIN || errors.Is(rerr, unix.EOPNOTSUPP) || rerr == unix.ENOSYS || rerr == unix.EINVAL:
		return n, errWouldBlock
	case rerr != nil:
		return n, &os.PathError{Op: "preadv2", Path: f.Name(), Err: rerr}
	}
	return n, nil
}

// startWriteback has the kernel start writing [off, off+n) of f to the
// device without waiting for it (sync_file_range, SYNC_FILE_RANGE_WRITE).
// Object data applied from the journal is made durable only at the next
// checkpoint; left dirty until then, hundreds of megabytes of a bulk
// write waited in the page cache, and the first fsync of anything on the
// filesystem after it (a cluster log entry, say) paid for writing them
// all out: `sync` after a 256 MiB import into 3 nodes took 1.5 s, and the
// attach of the next client 0.4 s.
func startWriteback(f *os.File, off, n int64) {
	rc, err := f.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) {
		_ = unix.SyncFileRange(int(fd), off, n, unix.SYNC_FILE_RANGE_WRITE)
	})
}
