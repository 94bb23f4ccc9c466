package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"github.com/sheepdog-go/sheepdog/daemon"
	"github.com/sheepdog-go/sheepdog/internal/nbdclient"
)

// `vdi write` and `vdi read` move their data over NBD, the node's block
// front end: one connection, up to writeDepth or readDepth requests of
// up to ioRequest bytes in flight, replies matched by handle. The NBD server attaches a
// working VDI when the connection opens and detaches it when it closes,
// so the attach rules are those of any NBD client (one attacher at a
// time); snapshots are read through their read-only exports NAME@TAG and
// NAME@ID, which need no attach.
//
// A write asks the export's block status (base:allocation) ahead of the
// data: a chunk of zeros that lands on never-written space (a hole) is
// not sent at all, so importing a sparse image into a thin VDI keeps it
// thin, and a chunk of zeros over data is sent as NBD_CMD_WRITE_ZEROES
// (whole objects become holes again, parts of objects are zeroed). A read
// skips holes the same way: nothing is requested for them, and an
// output file (--out) gets a hole, stdout zeros.

const (
	// ioChunk is the largest block the streams look at as one: zero
	// detection and holes work per block (the object size by default).
	ioChunk = 4 << 20
	// ioRequest is the largest NBD request: a block goes out as several.
	// Requests of 1 MiB cost the client and the node a third of the CPU
	// of 4 MiB ones for the same bytes (see git log).
	ioRequest = 1 << 20
	// writeDepth and readDepth are the requests in flight.
	writeDepth = 16
	readDepth  = 8
	// allocWindow is how much of the VDI one block status request asks
	// about (the server answers up to 1024 objects at a time).
	allocWindow = 1 << 30
	// closeTimeout bounds the wait for the server to detach the VDI
	// after NBD_CMD_DISC.
	closeTimeout = 30 * time.Second
)

// dialNBD opens the TCP connection to an NBD server. Every NBD
// connection of the CLI starts here.
func dialNBD(ctx context.Context, addr string) (net.Conn, error) {
	d := net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	return d.DialContext(ctx, "tcp", addr)
}

// openNBD attaches export through the NBD front end at nbdAddr.
func openNBD(ctx context.Context, nbdAddr, export string) (*nbdclient.Client, error) {
	tc, err := nbdClientTLS(nbdAddr) // with --tls-dir: NBD_OPT_STARTTLS
	if err != nil {
		return nil, err
	}
	nc, err := dialNBD(ctx, nbdAddr)
	if err != nil {
		return nil, fmt.Errorf("cannot reach the NBD server at %s: %w", nbdAddr, err)
	}
	return nbdclient.Dial(ctx, nc, nbdclient.Options{Export: export, BlockStatus: true, TLS: tc})
}

// nbdAddress finds the NBD address to use with the node at addr: its own
// front end, or another member's when it has none. A wildcard listen
// address (":10809", "0.0.0.0:10809") is reached at the host the node is
// known by.
func nbdAddress(ctx context.Context, addr string) (string, error) {
	st, err := callJSON[daemon.NodeStatus](ctx, addr, &daemon.AdminRequest{Cmd: "node.info"})
	if err != nil {
		return "", err
	}
	if st.NBD != "" {
		return reachable(st.NBD, addr), nil
	}
	rows, err := callJSON[[]daemon.NodeRow](ctx, addr, &daemon.AdminRequest{Cmd: "node.list"})
	if err != nil {
		return "", err
	}
	for _, r := range rows {
		if r.NBD != "" {
			return reachable(r.NBD, r.Addr), nil
		}
	}
	return "", errors.New("no node of the cluster serves NBD, which vdi read and vdi write use (start sheep with --nbd HOST:PORT)")
}

// reachable replaces an unspecified host in listen by the host of known.
func reachable(listen, known string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return listen
	}
	if ip := net.ParseIP(host); host != "" && (ip == nil || !ip.IsUnspecified()) {
		return listen
	}
	khost, _, err := net.SplitHostPort(known)
	if err != nil || khost == "" {
		khost = "127.0.0.1"
	}
	return net.JoinHostPort(khost, port)
}

// nbdOpenError explains a refused NBD attach in the CLI's words.
func nbdOpenError(label string, err error) error {
	var oe *nbdclient.OptionError
	if errors.As(err, &oe) && oe.Unknown() {
		return fmt.Errorf("%s: %s", label, oe.Msg)
	}
	return fmt.Errorf("%s: %w", label, err)
}

// allocMap answers "is [off, off+n) a hole?" for a transfer moving
// forward through a VDI, from block status asked a window at a time.
type allocMap struct {
	c     *nbdclient.Client
	end   uint64 // of the VDI
	base  uint64 // offset of exts[0]
	exts  []nbdclient.Extent
	known uint64 // exts cover [base, known)
	off   bool   // no block status: nothing is known to be a hole
}

func newAllocMap(c *nbdclient.Client, from uint64) *allocMap {
	return &allocMap{c: c, end: c.Size(), base: from, known: from, off: !c.CanBlockStatus()}
}

// hole reports whether [off, off+n) is all hole; off never goes back.
func (m *allocMap) hole(off, n uint64) (bool, error) {
	if m.off || n == 0 {
		return false, nil
	}
	for m.known < off+n && m.known < m.end {
		exts, err := m.c.BlockStatus(m.known, min(allocWindow, m.end-m.known))
		if err != nil {
			return false, fmt.Errorf("block status at %d: %w", m.known, err)
		}
		if len(exts) == 0 {
			return false, fmt.Errorf("block status at %d: empty answer", m.known)
		}
		for _, e := range exts {
			m.exts = append(m.exts, e)
			m.known += e.Length
		}
	}
	// Drop what lies before off.
	for len(m.exts) > 0 && m.base+m.exts[0].Length <= off {
		m.base += m.exts[0].Length
		m.exts = m.exts[1:]
	}
	pos := m.base
	for _, e := range m.exts {
		if pos >= off+n {
			break
		}
		if pos+e.Length > off && !e.Hole {
			return false, nil
		}
		pos += e.Length
	}
	return pos >= off+n, nil
}

// pending is a block in flight, oldest first: its requests, at most
// ioRequest bytes each.
type pending struct {
	calls []*nbdclient.Call // none: nothing was sent (a hole)
	off   uint64
	buf   []byte // the data (write) or destination (read); nil for a hole
	n     int
}

// wait waits for every request of the block and returns the first error.
func (p *pending) wait() error {
	var first error
	for _, c := range p.calls {
		if err := c.Wait(); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// split starts op on each ioRequest-sized piece of p.buf[:p.n].
func (p *pending) split(op func(b []byte, off uint64) *nbdclient.Call) {
	for i := 0; i < p.n; i += ioRequest {
		j := min(i+ioRequest, p.n)
		p.calls = append(p.calls, op(p.buf[i:j], p.off+uint64(i)))
	}
}

// bufPool hands out the transfer's block buffers.
type bufPool struct {
	free [][]byte
	size int
}

func (p *bufPool) get() []byte {
	if n := len(p.free); n > 0 {
		b := p.free[n-1]
		p.free = p.free[:n-1]
		return b
	}
	return make([]byte, p.size)
}

func (p *bufPool) put(b []byte) {
	if b != nil {
		p.free = append(p.free, b[:cap(b)])
	}
}

// chunkSize is the request size for a VDI: its object size, at most
// ioChunk and what the server takes; chunks are aligned to it, so a chunk
// never spans two objects.
func chunkSize(blockShift int, maxBlock uint32) int {
	n := ioChunk
	if blockShift > 0 && blockShift < 31 && 1<<blockShift < n {
		n = 1 << blockShift
	}
	for n > int(maxBlock) && n > 4096 {
		n /= 2
	}
	return n
}

// until is how many bytes of a chunk start at off: up to the next
// multiple of chunk, and at most left.
func until(off uint64, chunk int, left uint64) int {
	return int(min(uint64(chunk)-off%uint64(chunk), left))
}

var zeroChunk = make([]byte, ioChunk)

func isZero(b []byte) bool {
	for len(b) > 0 {
		n := min(len(b), len(zeroChunk))
		if !bytes.Equal(b[:n], zeroChunk[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}

// writeStats is what a write did.
type writeStats struct {
	written, zeroed, skipped uint64
}

func (s writeStats) note() string {
	var parts []string
	if s.skipped > 0 {
		parts = append(parts, fmt.Sprintf("%s of zeros left as holes", fmtBytes(int64(s.skipped))))
	}
	if s.zeroed > 0 {
		parts = append(parts, fmt.Sprintf("%s zeroed", fmtBytes(int64(s.zeroed))))
	}
	return strings.Join(parts, ", ")
}

// inputSize is how many bytes remain to be read from in, if it is a
// regular file (else -1).
func inputSize(in io.Reader) int64 {
	f, ok := in.(*os.File)
	if !ok || f == nil {
		return -1
	}
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() {
		return -1
	}
	pos, err := f.Seek(0, io.SeekCurrent)
	if err != nil {
		return -1
	}
	return max(st.Size()-pos, 0)
}

func vdiWriteCommand() *command {
	var addr, file string
	return &command{
		name: "write", usage: "NAME [OFFSET [LEN]]", short: "write a file or stdin into a VDI",
		long: `Writes --file (or stdin) into the VDI from OFFSET on, LEN bytes at most
(all of the input by default), over the NBD front end of the node given by
-a (or of another member when it has none). The VDI is attached while the
write runs: it fails if another client has it attached. Zeros written
where the VDI was never written are skipped, so a sparse image stays
sparse in a thin VDI; zeros over data do zero it. Everything written is
flushed before the command returns. Progress goes to stderr when it is a
terminal.`,
		flags: withFlags(adminFlags(&addr, nil), func(fs *flag.FlagSet) {
			fs.StringVar(&file, "file", "", "read the data from this file instead of stdin")
		}),
		run: func(ctx context.Context, e *env, args []string) error {
			name, off, length, err := rangeArgs("vdi write", args)
			if err != nil {
				return err
			}
			in := e.stdin
			label := "vdi write " + name
			if file != "" && file != "-" {
				f, err := os.Open(file)
				if err != nil {
					return err
				}
				defer f.Close()
				in = f
			}
			return vdiWrite(ctx, e, addr, name, off, length, in, label)
		},
	}
}

func vdiWrite(ctx context.Context, e *env, addr, name string, off uint64, length *uint64, in io.Reader, label string) error {
	row, err := callJSON[daemon.VDIRow](ctx, addr, &daemon.AdminRequest{Cmd: "vdi.info", Name: name})
	if err != nil {
		return err
	}
	if off > row.Size {
		return usagef("offset %d is past the end of %s (%d bytes)", off, name, row.Size)
	}
	// How much to write, when known: LEN, or what the input file holds.
	total := int64(-1)
	if length != nil {
		total = int64(min(*length, 1<<62))
	}
	if n := inputSize(in); n >= 0 && (total < 0 || n < total) {
		total = n
	}
	if total >= 0 && off+uint64(total) > row.Size {
		return fmt.Errorf("%s: %d bytes at offset %d go past the end of the VDI (%d bytes)", label, total, off, row.Size)
	}
	limit := row.Size - off
	if length != nil {
		limit = min(limit, *length)
	}
	if total < 0 && length != nil && off+*length > row.Size {
		return fmt.Errorf("%s: %d bytes at offset %d go past the end of the VDI (%d bytes)", label, *length, off, row.Size)
	}

	nbdAddr, err := nbdAddress(ctx, addr)
	if err != nil {
		return err
	}
	c, err := openNBD(ctx, nbdAddr, name)
	if err != nil {
		return nbdOpenError(label, err)
	}
	stop := context.AfterFunc(ctx, func() { c.Abort(ctx.Err()) })
	defer stop()
	if c.ReadOnly() {
		c.Close(closeTimeout)
		return fmt.Errorf("%s: the export is read-only", label)
	}
	if c.Size() != row.Size {
		c.Close(closeTimeout)
		return fmt.Errorf("%s: the NBD export has %d bytes, the VDI %d (resized meanwhile?)", label, c.Size(), row.Size)
	}

	prog := startProgress(e.stderr, "writing "+name, max(total, 0))
	st, err := writeStream(c, in, off, limit, chunkSize(row.BlockShift, c.MaxBlock()), length == nil, prog)
	if err == nil {
		if ferr := c.Flush(); ferr != nil {
			err = fmt.Errorf("flush: %w", ferr)
		}
	}
	if err != nil {
		c.Abort(err)
		prog.finish("", err)
		if ctx.Err() != nil {
			return fmt.Errorf("%s: interrupted after %d bytes (written up to then, not flushed)", label, st.written+st.zeroed+st.skipped)
		}
		return fmt.Errorf("%s: %w", label, err)
	}
	if err := c.Close(closeTimeout); err != nil {
		prog.finish("", err)
		return fmt.Errorf("%s: detach: %w", label, err)
	}
	prog.finish(st.note(), nil)
	return nil
}

// writeStream writes in to c from off on, at most limit bytes. With
// toEnd (no LEN given) input beyond the VDI's end is an error.
func writeStream(c *nbdclient.Client, in io.Reader, off, limit uint64, chunk int, toEnd bool, prog *progress) (writeStats, error) {
	var st writeStats
	pool := bufPool{size: chunk}
	alloc := newAllocMap(c, off)
	var fifo []pending
	inflight := 0
	wait := func() error {
		p := fifo[0]
		fifo = fifo[1:]
		inflight -= len(p.calls)
		err := p.wait()
		pool.put(p.buf)
		return err
	}
	drain := func(err error) (writeStats, error) {
		for len(fifo) > 0 {
			if werr := wait(); err == nil {
				err = werr
			}
		}
		return st, err
	}
	pos, left := off, limit
	for left > 0 {
		buf := pool.get()
		n := until(pos, chunk, left)
		got, rerr := io.ReadFull(in, buf[:n])
		last := rerr == io.EOF || rerr == io.ErrUnexpectedEOF
		if rerr != nil && !last {
			pool.put(buf)
			return drain(fmt.Errorf("reading the input: %w", rerr))
		}
		if got > 0 {
			data := buf[:got]
			p := pending{off: pos, buf: buf, n: got}
			if isZero(data) {
				hole, err := alloc.hole(pos, uint64(got))
				if err != nil {
					pool.put(buf)
					return drain(err)
				}
				if hole {
					st.skipped += uint64(got)
				} else {
					// One request for the block, so whole objects become
					// holes again.
					p.calls = append(p.calls, c.ZeroAsync(pos, uint64(got), false))
					st.zeroed += uint64(got)
				}
			} else {
				p.split(func(b []byte, off uint64) *nbdclient.Call { return c.WriteAsync(b, off, false) })
				st.written += uint64(got)
			}
			fifo = append(fifo, p)
			inflight += len(p.calls)
			pos += uint64(got)
			left -= uint64(got)
			prog.add(int64(got))
			for inflight >= writeDepth || len(fifo) > writeDepth {
				if err := wait(); err != nil {
					return drain(err)
				}
			}
		} else {
			pool.put(buf)
		}
		if last {
			return drain(nil)
		}
	}
	if toEnd {
		// The VDI is full: the input must be too.
		var b [1]byte
		if n, _ := io.ReadFull(in, b[:]); n > 0 {
			return drain(fmt.Errorf("the input goes past the end of the VDI (%d bytes)", c.Size()))
		}
	}
	return drain(nil)
}

func vdiReadCommand() *command {
	var addr, ref, out string
	return &command{
		name: "read", usage: "NAME [OFFSET [LEN]]", short: "write a VDI's (or a snapshot's) contents to stdout or a file",
		long: `Reads the VDI (with -s, one of its snapshots) from OFFSET on, LEN bytes at
most (to its end by default), to --out or stdout, over the NBD front end of
the node given by -a (or of another member when it has none). Reading a
working VDI attaches it for the time of the read; if another client has it
attached, the read goes through the node's admin channel instead (slower).
A snapshot is read through its read-only export and needs no attach. Space
the VDI never wrote is not read: --out gets holes there (a sparse file),
stdout zeros. Progress goes to stderr when it is a terminal.`,
		flags: withFlags(adminFlags(&addr, nil), snapFlag(&ref, "read this snapshot (tag or id)"), func(fs *flag.FlagSet) {
			fs.StringVar(&out, "out", "", "write to this file (created or truncated) instead of stdout")
			fs.StringVar(&out, "o", "", "same as --out")
		}),
		run: func(ctx context.Context, e *env, args []string) error {
			name, off, length, err := rangeArgs("vdi read", args)
			if err != nil {
				return err
			}
			tag, id, err := snapRef(ref)
			if err != nil {
				return err
			}
			return vdiRead(ctx, e, addr, name, tag, id, off, length, out)
		},
	}
}

func vdiRead(ctx context.Context, e *env, addr, name, tag string, id uint32, off uint64, length *uint64, out string) error {
	row, err := callJSON[daemon.VDIRow](ctx, addr, &daemon.AdminRequest{Cmd: "vdi.info", Name: name, Tag: tag, Snap: id})
	if err != nil {
		return err
	}
	if off > row.Size {
		return usagef("offset %d is past the end of %s (%d bytes)", off, name, row.Size)
	}
	end := row.Size
	if length != nil {
		end = min(row.Size, off+*length)
	}
	export, label := name, "vdi read "+name
	snapshot := tag != "" || id != 0
	if snapshot {
		export = snapLabel(name, tag, id)
		label = "vdi read " + export
	}

	// The output: a file we create may get holes; stdout gets every byte.
	w := e.stdout
	var f *os.File
	if out != "" && out != "-" {
		f, err = os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
		if err != nil {
			return err
		}
		w = f
	}
	sparse := false
	if f != nil {
		if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() {
			sparse = true
		}
	}
	err = readTo(ctx, e, addr, name, tag, id, export, label, snapshot || !strings.Contains(name, "@"), off, end, row.BlockShift, w, f, sparse)
	if f != nil {
		if cerr := f.Close(); err == nil && cerr != nil {
			err = cerr
		}
	}
	return err
}

// readTo reads [off, end) of export to w (f when it is the output file,
// sparse when holes may be skipped in it).
func readTo(ctx context.Context, e *env, addr, name, tag string, id uint32, export, label string, useNBD bool, off, end uint64, shift int, w io.Writer, f *os.File, sparse bool) error {
	var c *nbdclient.Client
	if useNBD {
		nbdAddr, err := nbdAddress(ctx, addr)
		if err != nil {
			return err
		}
		c, err = openNBD(ctx, nbdAddr, export)
		var oe *nbdclient.OptionError
		if errors.As(err, &oe) && oe.Policy() && tag == "" && id == 0 {
			// Attached by another client: read without attaching.
			if isTerminal(e.stderr) {
				fmt.Fprintf(e.stderr, "%s is attached by another client: reading through the admin channel\n", name)
			}
			c, err = nil, nil
		}
		if err != nil {
			return nbdOpenError(label, err)
		}
	}
	prog := startProgress(e.stderr, "reading "+export, int64(end-off))
	var err error
	if c != nil {
		stop := context.AfterFunc(ctx, func() { c.Abort(ctx.Err()) })
		defer stop()
		err = readStream(c, w, f, sparse, off, end, chunkSize(shift, c.MaxBlock()), prog)
		if err != nil {
			c.Abort(err)
		} else if cerr := c.Close(closeTimeout); cerr != nil {
			err = fmt.Errorf("detach: %w", cerr)
		}
	} else {
		err = readAdmin(ctx, addr, name, w, off, end, prog)
	}
	if err == nil && sparse {
		// Holes at the end still make the file as long as the range.
		err = f.Truncate(int64(end - off))
	}
	prog.finish("", err)
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("%s: interrupted", label)
		}
		return fmt.Errorf("%s: %w", label, err)
	}
	return nil
}

// readStream reads [off, end) from c to w in order, readDepth requests in
// flight; holes are not requested: in a sparse output file they are
// skipped, elsewhere written as zeros.
func readStream(c *nbdclient.Client, w io.Writer, f *os.File, sparse bool, off, end uint64, chunk int, prog *progress) error {
	if end > c.Size() {
		return fmt.Errorf("the NBD export has %d bytes, fewer than the VDI (resized meanwhile?)", c.Size())
	}
	pool := bufPool{size: chunk}
	alloc := newAllocMap(c, off)
	var fifo []pending
	inflight := 0
	emit := func() error {
		p := fifo[0]
		fifo = fifo[1:]
		inflight -= len(p.calls)
		defer pool.put(p.buf)
		if err := p.wait(); err != nil {
			return err
		}
		var err error
		switch {
		case p.calls == nil && sparse:
			// A hole: nothing to write.
		case p.calls == nil:
			_, err = w.Write(zeroChunk[:p.n])
		case sparse:
			_, err = f.WriteAt(p.buf[:p.n], int64(p.off-off))
		default:
			_, err = w.Write(p.buf[:p.n])
		}
		if err != nil {
			return fmt.Errorf("writing the output: %w", err)
		}
		prog.add(int64(p.n))
		return nil
	}
	fail := func(err error) error {
		for _, p := range fifo {
			_ = p.wait()
		}
		return err
	}
	for pos := off; pos < end; {
		n := until(pos, chunk, end-pos)
		hole, err := alloc.hole(pos, uint64(n))
		if err != nil {
			return fail(err)
		}
		p := pending{off: pos, n: n}
		if !hole {
			p.buf = pool.get()
			p.split(c.ReadAsync)
		}
		fifo = append(fifo, p)
		inflight += len(p.calls)
		pos += uint64(n)
		for inflight >= readDepth || len(fifo) > readDepth {
			if err := emit(); err != nil {
				return fail(err)
			}
		}
	}
	for len(fifo) > 0 {
		if err := emit(); err != nil {
			return fail(err)
		}
	}
	return nil
}

// readAdmin reads [off, end) of the working VDI name through the admin
// channel, without attaching it (for a VDI another client has attached).
func readAdmin(ctx context.Context, addr, name string, w io.Writer, off, end uint64, prog *progress) error {
	for pos := off; pos < end; {
		n := min(ioChunk, end-pos)
		b, err := call(ctx, addr, &daemon.AdminRequest{Cmd: "vdi.read", Name: name, Offset: pos, Length: n})
		if err != nil {
			return err
		}
		if uint64(len(b)) != n {
			return fmt.Errorf("read of %d bytes at %d returned %d", n, pos, len(b))
		}
		if _, err := w.Write(b); err != nil {
			return fmt.Errorf("writing the output: %w", err)
		}
		prog.add(int64(n))
		pos += n
	}
	return nil
}
