package daemon

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/sheepdog-go/sheepdog/core"
	"github.com/sheepdog-go/sheepdog/nbd"
)

// backend serves VDIs to the NBD server: export name = VDI name. The
// cluster's attach lock keeps other nodes out; open keeps a second client
// of this node out.
type backend struct {
	d *Daemon
}

// claim reserves vid for one local client (NBD or `vdi write`); the
// returned function gives it back.
func (d *Daemon) claim(vid uint32) (func(), bool) {
	d.openMu.Lock()
	defer d.openMu.Unlock()
	if d.open == nil {
		d.open = map[uint32]bool{}
	}
	if d.open[vid] {
		return nil, false
	}
	d.open[vid] = true
	return func() {
		d.openMu.Lock()
		delete(d.open, vid)
		d.openMu.Unlock()
	}, true
}

func (b *backend) lookup(ctx context.Context, name string) (core.VDI, bool, error) {
	var v core.VDI
	var ok bool
	err := b.d.Query(ctx, func(n *core.Node) {
		if x := n.Cluster().LookupVDI(name); x != nil {
			v, ok = *x, true
		}
	})
	return v, ok, err
}

func (b *backend) Open(ctx context.Context, name string) (nbd.Volume, error) {
	if strings.Contains(name, "@") {
		return nil, fmt.Errorf("%w: %q: snapshots are not supported yet", nbd.ErrUnknownExport, name)
	}
	v, ok, err := b.lookup(ctx, name)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("%w: no VDI named %q", nbd.ErrUnknownExport, name)
	}
	release, ok := b.d.claim(v.ID)
	if !ok {
		return nil, fmt.Errorf("%w: VDI %q is attached by another client of this node (one attacher at a time)", nbd.ErrBusy, name)
	}
	rep, err := b.d.Do(ctx, &core.Request{Type: core.ReqAttach, VID: v.ID, Time: time.Now().Unix()})
	if err != nil {
		release()
		return nil, err
	}
	switch rep.Code {
	case core.OK:
	case core.ErrLocked:
		release()
		return nil, fmt.Errorf("%w: VDI %q is attached elsewhere (one attacher at a time)", nbd.ErrBusy, name)
	default:
		release()
		return nil, fmt.Errorf("attach VDI %q: %w", name, rep.Code)
	}
	b.d.log.Info("VDI attached", "vdi", name, "vid", fmt.Sprintf("%06x", v.ID))
	return &volume{d: b.d, vid: v.ID, size: v.Size, name: name, objSize: v.ObjectSize(), release: release}, nil
}

func (b *backend) List(ctx context.Context) ([]nbd.Export, error) {
	var out []nbd.Export
	err := b.d.Query(ctx, func(n *core.Node) {
		for _, v := range n.Cluster().VDIs() {
			out = append(out, nbd.Export{Name: v.Name, Description: fmt.Sprintf("sheepdog VDI %06x, %d bytes, %d copies", v.ID, v.Size, v.Copies)})
		}
	})
	return out, err
}

// volume is one attached VDI.
type volume struct {
	d       *Daemon
	vid     uint32
	size    uint64
	objSize uint64
	name    string
	once    sync.Once
	release func()
}

func (v *volume) Size() uint64   { return v.size }
func (v *volume) ReadOnly() bool { return false }

func (v *volume) Description() string {
	return fmt.Sprintf("sheepdog VDI %s (%06x)", v.name, v.vid)
}

// do runs one request and records its metrics.
func (v *volume) do(ctx context.Context, r *core.Request) (core.Reply, error) {
	r.VID = v.vid
	start := time.Now()
	rep, err := v.d.Do(ctx, r)
	return rep, v.record(r, start, rep, err)
}

// start queues one request without waiting (see nbd.Submitter); it runs
// at the latest on Drained. done gets the reply and its error, from the
// goroutine running the node.
func (v *volume) start(r *core.Request, done func(core.Reply, error)) {
	r.VID = v.vid
	start := time.Now()
	if !v.d.submit(r, func(rep core.Reply) { done(rep, v.record(r, start, rep, nil)) }) {
		done(core.Reply{}, v.record(r, start, core.Reply{}, ErrStopped))
	}
}

// record counts a finished request in the metrics and returns its error.
func (v *volume) record(r *core.Request, start time.Time, rep core.Reply, err error) error {
	op := r.Type.String()
	v.d.metrics.ioLatency.WithLabelValues(op).Observe(time.Since(start).Seconds())
	v.d.metrics.ioRequests.WithLabelValues(op).Inc()
	v.d.metrics.ioBytes.WithLabelValues(op).Add(float64(r.Len))
	if err != nil {
		return err
	}
	if rep.Code != core.OK {
		v.d.metrics.ioErrors.WithLabelValues(op, rep.Code.String()).Inc()
		return codeErr(rep.Code)
	}
	return nil
}

var _ nbd.Submitter = (*volume)(nil)

// Drained runs the requests the NBD connection submitted together: on
// this goroutine if they are all there is (one request at a time), else
// as a batch on the loop goroutine (see Daemon.kick).
func (v *volume) Drained() { v.d.kick() }

// SubmitRead reads without a goroutine waiting for it; the reply's data
// goes to the client as it is.
func (v *volume) SubmitRead(off uint64, n uint32, done func([]byte, error)) {
	v.start(&core.Request{Type: core.ReqRead, Off: off, Len: uint64(n)}, func(rep core.Reply, err error) {
		done(rep.Data, err)
	})
}

// SubmitWrite writes without a goroutine waiting for it; p is handed over
// (the core and the store keep it as it is).
func (v *volume) SubmitWrite(p []byte, off uint64, fua bool, done func(error)) {
	v.start(&core.Request{Type: core.ReqWrite, Off: off, Len: uint64(len(p)), Data: p[:len(p):len(p)], FUA: fua}, func(_ core.Reply, err error) {
		done(err)
	})
}

func (v *volume) ReadAt(ctx context.Context, p []byte, off uint64) error {
	rep, err := v.do(ctx, &core.Request{Type: core.ReqRead, Off: off, Len: uint64(len(p))})
	if err != nil {
		return err
	}
	copy(p, rep.Data)
	return nil
}

// WriteAt is the synchronous write (the NBD server submits its reads and
// writes instead, see SubmitWrite).
func (v *volume) WriteAt(ctx context.Context, p []byte, off uint64, fua bool) error {
	// The node may keep retrying a write after answering (a timed-out
	// write stays queued so later writes cannot overtake it), and the
	// store keeps the data until applied, so they get their own copy of a
	// buffer the caller may reuse.
	p = append([]byte(nil), p...)
	_, err := v.do(ctx, &core.Request{Type: core.ReqWrite, Off: off, Len: uint64(len(p)), Data: p, FUA: fua})
	return err
}

func (v *volume) Flush(ctx context.Context) error {
	_, err := v.do(ctx, &core.Request{Type: core.ReqFlush})
	return err
}

func (v *volume) Trim(ctx context.Context, off, length uint64, fua bool) error {
	_, err := v.do(ctx, &core.Request{Type: core.ReqTrim, Off: off, Len: length, FUA: fua})
	return err
}

func (v *volume) Zero(ctx context.Context, off, length uint64, f nbd.ZeroFlags) error {
	if f.FastZero && (f.NoHole || off%v.objSize != 0 || length%v.objSize != 0) {
		return nbd.ErrNotFast // only whole objects are zeroed without writing data
	}
	_, err := v.do(ctx, &core.Request{Type: core.ReqZero, Off: off, Len: length, NoHole: f.NoHole, FUA: f.FUA})
	return err
}

var _ nbd.Extenter = (*volume)(nil)

// mapMaxObjects bounds one block status answer (the NBD client asks
// again for the rest): 1024 objects is 4 GiB with 4 MiB objects.
const mapMaxObjects = 1024

// Extents reports, object by object, which parts of the VDI hold data;
// objects never written (or discarded) are holes that read as zeroes,
// which lets sparse-aware clients (qemu-img convert, nbdcopy) skip them.
func (v *volume) Extents(ctx context.Context, off, length uint64) ([]nbd.Extent, error) {
	if off >= v.size || length == 0 {
		return nil, nil
	}
	first := off / v.objSize
	end := min(off+length, v.size, (first+mapMaxObjects)*v.objSize)
	rep, err := v.do(ctx, &core.Request{Type: core.ReqMap, Off: off, Len: end - off})
	if err != nil {
		return nil, err
	}
	var out []nbd.Extent
	for i, has := range rep.Data {
		lo := max(off, (first+uint64(i))*v.objSize)
		hi := min(end, (first+uint64(i)+1)*v.objSize)
		hole := has == 0
		if k := len(out) - 1; k >= 0 && out[k].Hole == hole {
			out[k].Length += hi - lo
			continue
		}
		out = append(out, nbd.Extent{Length: hi - lo, Hole: hole, Zero: hole})
	}
	return out, nil
}

func (v *volume) Close() error {
	var err error
	v.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		var rep core.Reply
		rep, err = v.d.Do(ctx, &core.Request{Type: core.ReqDetach, VID: v.vid, Time: time.Now().Unix()})
		if err == nil && rep.Code != core.OK {
			err = fmt.Errorf("detach VDI %q: %w", v.name, rep.Code)
		}
		v.release()
		v.d.log.Info("VDI detached", "vdi", v.name, "err", err)
	})
	return err
}

// codeErr maps a core result to the NBD server's errors.
func codeErr(c core.Code) error {
	switch c {
	case core.OK:
		return nil
	case core.ErrNoSpace:
		return fmt.Errorf("%w: %v", nbd.ErrNoSpace, c)
	case core.ErrInvalid:
		return fmt.Errorf("%w: %v", nbd.ErrInvalid, c)
	case core.ErrPerm, core.ErrLocked:
		return fmt.Errorf("%w: %v", nbd.ErrPermission, c)
	}
	return fmt.Errorf("sheepdog: %w", c)
}
