package daemon

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sheepdog-go/sheepdog/core"
	"github.com/sheepdog-go/sheepdog/nbd"
)

// backend serves VDIs to the NBD server: export name = VDI name, or
// NAME@TAG and NAME@ID for a snapshot (read-only). The cluster's attach
// lock keeps other nodes out; open keeps a second client of this node
// out.
type backend struct {
	d *Daemon
}

// claim reserves the working VDI called name for one local client (NBD,
// a flatten, a preallocation); the returned function gives it back. It goes
// by name, not id: a snapshot gives the working VDI a new id, and the
// client that had it goes on with the new one.
func (d *Daemon) claim(name string) (func(), bool) {
	d.openMu.Lock()
	defer d.openMu.Unlock()
	if d.open == nil {
		d.open = map[string]chan struct{}{}
	}
	if _, busy := d.open[name]; busy {
		return nil, false
	}
	released := make(chan struct{})
	d.open[name] = released
	return func() {
		d.openMu.Lock()
		if d.open[name] == released {
			delete(d.open, name)
		}
		d.openMu.Unlock()
		close(released)
	}, true
}

// reattachWait bounds how long a new client of a VDI waits for the local
// client before it to let go: a client that disconnects and reconnects at
// once (qemu-img convert after another, a VM restarting) finds the old
// connection still detaching.
const reattachWait = 5 * time.Second

// claimWait is claim for a new client: it waits, up to reattachWait or
// until ctx ends, for a local client holding the VDI to release it.
func (d *Daemon) claimWait(ctx context.Context, name string) (func(), bool) {
	timer := time.NewTimer(reattachWait)
	defer timer.Stop()
	for {
		if release, ok := d.claim(name); ok {
			return release, true
		}
		d.openMu.Lock()
		released, busy := d.open[name]
		d.openMu.Unlock()
		if !busy {
			continue
		}
		select {
		case <-released:
		case <-ctx.Done():
			return nil, false
		case <-timer.C:
			return nil, false
		}
	}
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

// splitSnapshot splits an export name NAME@TAG or NAME@ID (a number: the
// snapshot id) into its parts; ok is false for a plain VDI name.
func splitSnapshot(export string) (name, tag string, id uint32, ok bool) {
	name, ref, ok := strings.Cut(export, "@")
	if !ok {
		return export, "", 0, false
	}
	if n, err := strconv.ParseUint(ref, 10, 32); err == nil {
		return name, "", uint32(n), true
	}
	return name, ref, 0, true
}

// openSnapshot serves a snapshot read-only: no attach lock (nothing
// writes it, any number of clients may read it), and every request
// addresses exactly the snapshot's id.
func (b *backend) openSnapshot(ctx context.Context, export, name, tag string, id uint32) (nbd.Volume, error) {
	if id == 0 && tag == "" {
		return nil, fmt.Errorf("%w: %q: a snapshot id must be larger than zero", nbd.ErrUnknownExport, export)
	}
	var v core.VDI
	found := false
	if err := b.d.Query(ctx, func(n *core.Node) {
		if x := n.Cluster().LookupSnapshot(name, tag, id); x != nil {
			v, found = *x, true
		}
	}); err != nil {
		return nil, err
	}
	if !found {
		return nil, fmt.Errorf("%w: VDI %q has no snapshot %s", nbd.ErrUnknownExport, name, strings.TrimPrefix(export, name+"@"))
	}
	b.d.log.Info("snapshot opened read-only", "export", export, "vid", fmt.Sprintf("%06x", v.ID))
	vol := &volume{d: b.d, size: v.Size, name: export, objSize: v.ObjectSize(), snapshot: true, release: func() {}}
	vol.vid.Store(v.ID)
	return vol, nil
}

func (b *backend) Open(ctx context.Context, name string) (nbd.Volume, error) {
	if base, tag, id, ok := splitSnapshot(name); ok {
		return b.openSnapshot(ctx, name, base, tag, id)
	}
	v, ok, err := b.lookup(ctx, name)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("%w: no VDI named %q", nbd.ErrUnknownExport, name)
	}
	release, ok := b.d.claimWait(ctx, name)
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
	vol := &volume{d: b.d, size: v.Size, name: name, objSize: v.ObjectSize(), release: release}
	vol.vid.Store(v.ID)
	return vol, nil
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

// volume is one attached VDI, or a snapshot served read-only.
type volume struct {
	d *Daemon
	// vid is the VDI the volume's requests address. A snapshot of the
	// attached VDI gives its working VDI a new id: requests still sent
	// with the old one are served by the new one, whose id their reply
	// carries, and the volume moves on to it (see follow).
	vid      atomic.Uint32
	size     uint64
	objSize  uint64
	name     string
	snapshot bool // a read-only snapshot: requests address exactly vid
	once     sync.Once
	release  func()
}

func (v *volume) Size() uint64   { return v.size }
func (v *volume) ReadOnly() bool { return v.snapshot }

func (v *volume) Description() string {
	if v.snapshot {
		return fmt.Sprintf("sheepdog snapshot %s (%06x), read-only", v.name, v.vid.Load())
	}
	return fmt.Sprintf("sheepdog VDI %s (%06x)", v.name, v.vid.Load())
}

// address points r at the volume's VDI and returns the id it used.
func (v *volume) address(r *core.Request) uint32 {
	vid := v.vid.Load()
	r.VID, r.Exact = vid, v.snapshot
	return vid
}

// follow moves the volume to the VDI a reply says served a request sent
// to sent: the working VDI that took over after a snapshot. Only a reply
// to a request sent with the current id moves it, so a late reply to an
// older request cannot move it back.
func (v *volume) follow(sent uint32, rep core.Reply) {
	if v.snapshot || rep.Code != core.OK || rep.VID == 0 || rep.VID == sent {
		return
	}
	if v.vid.CompareAndSwap(sent, rep.VID) {
		v.d.log.Info("VDI snapshotted: the client goes on with its new working VDI", "vdi", v.name,
			"from", fmt.Sprintf("%06x", sent), "to", fmt.Sprintf("%06x", rep.VID))
	}
}

// do runs one request and records its metrics.
func (v *volume) do(ctx context.Context, r *core.Request) (core.Reply, error) {
	sent := v.address(r)
	start := time.Now()
	rep, err := v.d.Do(ctx, r)
	if err == nil {
		v.follow(sent, rep)
	}
	return rep, v.record(r, start, rep, err)
}

// start queues one request without waiting (see nbd.Submitter); it runs
// at the latest on Drained. done gets the reply and its error, from the
// goroutine running the node.
func (v *volume) start(r *core.Request, done func(core.Reply, error)) {
	sent := v.address(r)
	start := time.Now()
	if !v.d.submit(r, func(rep core.Reply) {
		v.follow(sent, rep)
		done(rep, v.record(r, start, rep, nil))
	}) {
		done(core.Reply{}, v.record(r, start, core.Reply{}, ErrStopped))
	}
}

// errReadOnly refuses a write to a snapshot before it reaches the node
// (the NBD server refuses them already, as the export is read-only).
func (v *volume) errReadOnly() error {
	return fmt.Errorf("%w: %s is a snapshot (read-only)", nbd.ErrPermission, v.name)
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
	if v.snapshot {
		done(v.errReadOnly())
		return
	}
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
	if v.snapshot {
		return v.errReadOnly()
	}
	p = append([]byte(nil), p...)
	_, err := v.do(ctx, &core.Request{Type: core.ReqWrite, Off: off, Len: uint64(len(p)), Data: p, FUA: fua})
	return err
}

func (v *volume) Flush(ctx context.Context) error {
	if v.snapshot {
		return nil // nothing was written
	}
	_, err := v.do(ctx, &core.Request{Type: core.ReqFlush})
	return err
}

func (v *volume) Trim(ctx context.Context, off, length uint64, fua bool) error {
	if v.snapshot {
		return v.errReadOnly()
	}
	_, err := v.do(ctx, &core.Request{Type: core.ReqTrim, Off: off, Len: length, FUA: fua})
	return err
}

func (v *volume) Zero(ctx context.Context, off, length uint64, f nbd.ZeroFlags) error {
	if v.snapshot {
		return v.errReadOnly()
	}
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
// An object a clone or snapshot inherits from an ancestor is data (the
// node's map follows the VDI's table), never a hole.
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
		if v.snapshot {
			v.d.log.Info("snapshot closed", "export", v.name)
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		vid := v.d.current(ctx, v.vid.Load())
		var rep core.Reply
		rep, err = v.d.Do(ctx, &core.Request{Type: core.ReqDetach, VID: vid, Time: time.Now().Unix()})
		if err == nil && rep.Code != core.OK {
			err = fmt.Errorf("detach VDI %q: %w", v.name, rep.Code)
		}
		v.release()
		v.d.log.Info("VDI detached", "vdi", v.name, "err", err)
	})
	return err
}

// current is the VDI that holds the attach lock vid had: vid itself, or
// the working VDI that took it over through snapshots made since (a
// volume that did no I/O after a snapshot still knows the old id).
func (d *Daemon) current(ctx context.Context, vid uint32) uint32 {
	_ = d.Query(ctx, func(n *core.Node) {
		cs := n.Cluster()
		for x := cs.VDI(vid); x != nil && x.IsSnapshot(); {
			if x = cs.Successor(x); x != nil {
				vid = x.ID
			}
		}
	})
	return vid
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
