//go:build unix

package nowait

import (
	"io"
	"net"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Conn is a socket whose reads and writes are raw system calls: read(2)
// and writev(2) on the non-blocking descriptor, waiting in the runtime's
// network poller (with the connection's deadlines) only when the socket
// has nothing to read or no room. A raw call skips the runtime's
// system-call bookkeeping. That bookkeeping is there for calls that may
// block a thread, which these cannot, and it has a cost that dominates a
// small request on a machine where a context switch is dear: a process
// that went idle parks its monitor thread (sysmon), and the first system
// call after that wakes it and puts it back on a 20 µs polling period.
// On the 2-vCPU guest these figures come from, those wake-ups were 45% of
// all context switches of a 3-node cluster serving 4 KiB writes at queue
// depth 1.
type Conn struct {
	net.Conn
	rc syscall.RawConn
}

// Wrap returns c as a Conn when it is a socket with a descriptor (TCP,
// Unix), else c itself.
func Wrap(c net.Conn) net.Conn {
	if _, ok := c.(*Conn); ok {
		return c
	}
	rc := Raw(c)
	if rc == nil {
		return c
	}
	return &Conn{Conn: c, rc: rc}
}

// SyscallConn returns the raw descriptor, so that Raw works on a Conn.
func (c *Conn) SyscallConn() (syscall.RawConn, error) { return c.rc, nil }

// Read reads what the socket holds, waiting for something if it is empty.
func (c *Conn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	var n int
	var rerr error
	err := c.rc.Read(func(fd uintptr) bool {
		n, rerr = rawRead(fd, p)
		return rerr != unix.EAGAIN
	})
	switch {
	case err != nil:
		return 0, err
	case rerr != nil:
		return 0, &net.OpError{Op: "read", Net: c.LocalAddr().Network(), Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: os.NewSyscallError("read", rerr)}
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// Write writes all of p, waiting for room when the socket is full.
func (c *Conn) Write(p []byte) (int, error) {
	iov := [1][]byte{p}
	n, err := c.Writev(iov[:])
	return int(n), err
}

// Writev writes all of iov, waiting for room when the socket is full,
// and returns the bytes written. It may reslice the buffers of iov in
// place.
func (c *Conn) Writev(iov [][]byte) (int64, error) {
	var total int64
	var werr error
	err := c.rc.Write(func(fd uintptr) bool {
		for len(iov) > 0 {
			var n int
			n, werr = rawWritev(fd, iov)
			if werr != nil {
				return werr != unix.EAGAIN
			}
			total += int64(n)
			iov = Advance(iov, n) // also drops leading empty buffers
		}
		return true
	})
	switch {
	case err != nil:
		return total, err
	case werr != nil:
		return total, &net.OpError{Op: "write", Net: c.LocalAddr().Network(), Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: os.NewSyscallError("writev", werr)}
	}
	return total, nil
}

// rawRead is one read(2) as a raw system call, retried on EINTR.
func rawRead(fd uintptr, p []byte) (int, error) {
	return raw(syscall.SYS_READ, fd, unsafe.Pointer(&p[0]), len(p))
}

// raw makes the raw system call trap(fd, p, n), retried on EINTR. p is
// an unsafe.Pointer up to the call so that it stays valid should the
// stack it points into move.
func raw(trap, fd uintptr, p unsafe.Pointer, n int) (int, error) {
	for {
		r, _, e := syscall.RawSyscall(trap, fd, uintptr(p), uintptr(n))
		switch e {
		case 0:
			return int(r), nil
		case unix.EINTR:
			continue
		}
		return 0, e
	}
}

// maxIOV is the most buffers one writev(2) takes (IOV_MAX on Linux).
const maxIOV = 1024

// rawWritev is one writev(2) of (at most maxIOV buffers of) iov as a raw
// system call, retried on EINTR. Empty buffers are skipped.
func rawWritev(fd uintptr, iov [][]byte) (int, error) {
	var small [32]unix.Iovec
	vecs := small[:0]
	for _, b := range iov {
		if len(vecs) == maxIOV {
			break
		}
		if len(b) == 0 {
			continue
		}
		v := unix.Iovec{Base: &b[0]}
		v.SetLen(len(b))
		vecs = append(vecs, v)
	}
	if len(vecs) == 0 {
		return 0, nil
	}
	return raw(syscall.SYS_WRITEV, fd, unsafe.Pointer(&vecs[0]), len(vecs))
}
