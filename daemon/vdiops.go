package daemon

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/sheepdog-go/sheepdog/core"
)

// The VDI lifecycle's admin commands: snapshot, clone, rollback,
// flatten, and the usage figures of `vdi list`.

// SnapshotInfo answers vdi.snapshot.
type SnapshotInfo struct {
	Name     string `json:"name"`
	Tag      string `json:"tag,omitempty"`
	SnapID   uint32 `json:"snap_id"`      // the snapshot's id (1, 2, … per name)
	Snapshot uint32 `json:"snapshot_vid"` // the snapshot's VDI id: the working VDI's old one
	VID      uint32 `json:"vid"`          // the working VDI's new id
}

// FlattenInfo answers vdi.flatten and vdi.flatten.status.
type FlattenInfo struct {
	Name    string `json:"name"`
	VID     uint32 `json:"vid"`
	Node    string `json:"node"`    // admin address of the node that runs it (ask it for the status)
	Scanned uint32 `json:"scanned"` // objects looked at
	Total   uint32 `json:"total"`   // objects of the VDI
	Copied  uint32 `json:"copied"`  // shared objects copied so far
	Done    bool   `json:"done"`
	Error   string `json:"error,omitempty"`
}

// numericTag reports whether tag would read as a snapshot id.
func numericTag(tag string) bool {
	return tag != "" && strings.Trim(tag, "0123456789") == ""
}

func snapName(tag string, id uint32) string {
	if tag != "" {
		return fmt.Sprintf("tagged %q", tag)
	}
	return fmt.Sprint(id)
}

// snapErr words a core error about the snapshot (tag or id) of name.
func snapErr(name, tag string, id uint32, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, core.ErrNoVDI):
		return fmt.Errorf("VDI %q has no snapshot %s", name, snapName(tag, id))
	case errors.Is(err, core.ErrBusy):
		return fmt.Errorf("snapshot %s of %q: a VDI is being made from it; try again in a moment", snapName(tag, id), name)
	}
	return vdiErr(name, err)
}

// vdiOrSnapshot is the working VDI r.Name, or its snapshot r.Tag or r.Snap.
func (d *Daemon) vdiOrSnapshot(ctx context.Context, r *AdminRequest) (core.VDI, error) {
	if r.Tag == "" && r.Snap == 0 {
		return d.vdiByName(ctx, r.Name)
	}
	return d.snapshotOf(ctx, r.Name, r.Tag, r.Snap)
}

// snapshotOf looks up the snapshot of name tagged tag, or with id id.
func (d *Daemon) snapshotOf(ctx context.Context, name, tag string, id uint32) (core.VDI, error) {
	var v core.VDI
	if tag == "" && id == 0 {
		return v, errors.New("a snapshot is needed: -s TAG or -s ID (the snapshot id must be larger than zero)")
	}
	found, named := false, false
	if err := d.Query(ctx, func(n *core.Node) {
		cs := n.Cluster()
		if x := cs.LookupSnapshot(name, tag, id); x != nil {
			v, found = *x, true
		}
		for _, x := range cs.VDIs() {
			named = named || x.Name == name
		}
	}); err != nil {
		return v, err
	}
	switch {
	case found:
		return v, nil
	case !named:
		return v, fmt.Errorf("no VDI named %q", name)
	}
	return v, fmt.Errorf("VDI %q has no snapshot %s", name, snapName(tag, id))
}

func (d *Daemon) vdiSnapshot(ctx context.Context, r *AdminRequest) (SnapshotInfo, error) {
	if numericTag(r.Tag) {
		return SnapshotInfo{}, fmt.Errorf("snapshot tag %q is a number, which would read as a snapshot id: use a name", r.Tag)
	}
	rep, err := d.do(ctx, &core.Request{Type: core.ReqSnapshot, Name: r.Name, Tag: r.Tag})
	switch {
	case errors.Is(err, core.ErrTagExists):
		return SnapshotInfo{}, fmt.Errorf("VDI %q has a snapshot tagged %q already", r.Name, r.Tag)
	case errors.Is(err, core.ErrInvalid):
		return SnapshotInfo{}, fmt.Errorf("invalid snapshot tag %q (at most 256 bytes, no '@' or '/')", r.Tag)
	case errors.Is(err, core.ErrBusy):
		return SnapshotInfo{}, fmt.Errorf("VDI %q: a snapshot, clone or rollback of it is still being made; try again", r.Name)
	case errors.Is(err, core.ErrTimeout):
		return SnapshotInfo{}, fmt.Errorf("snapshot of %q: timed out waiting for its new working VDI (the snapshot may still complete: see vdi list)", r.Name)
	case err != nil:
		return SnapshotInfo{}, vdiErr(r.Name, err)
	}
	out := SnapshotInfo{Name: r.Name, Tag: r.Tag, Snapshot: rep.Snap, VID: rep.VID}
	err = d.Query(ctx, func(n *core.Node) {
		if v := n.Cluster().VDI(rep.Snap); v != nil {
			out.SnapID = v.SnapID
		}
	})
	return out, err
}

func (d *Daemon) vdiClone(ctx context.Context, r *AdminRequest) (map[string]uint32, error) {
	snap, err := d.snapshotOf(ctx, r.Name, r.Tag, r.Snap)
	if err != nil {
		return nil, err
	}
	rep, err := d.do(ctx, &core.Request{Type: core.ReqClone, VID: snap.ID, Name: r.Dst})
	switch {
	case errors.Is(err, core.ErrNoVDI):
		return nil, snapErr(r.Name, r.Tag, r.Snap, err)
	case errors.Is(err, core.ErrTimeout):
		return nil, fmt.Errorf("clone %q: timed out waiting for it to be built (it may still complete: see vdi list)", r.Dst)
	case err != nil:
		return nil, vdiErr(r.Dst, err)
	}
	return map[string]uint32{"vid": rep.VID, "snapshot_vid": snap.ID}, nil
}

func (d *Daemon) vdiRollback(ctx context.Context, r *AdminRequest) (map[string]uint32, error) {
	snap, err := d.snapshotOf(ctx, r.Name, r.Tag, r.Snap)
	if err != nil {
		return nil, err
	}
	rep, err := d.do(ctx, &core.Request{Type: core.ReqRollback, Name: r.Name, VID: snap.ID})
	switch {
	case errors.Is(err, core.ErrBusy):
		return nil, fmt.Errorf("VDI %q: a snapshot, clone or rollback of it is still being made; try again", r.Name)
	case errors.Is(err, core.ErrTimeout):
		return nil, fmt.Errorf("rollback of %q: timed out waiting for its new working VDI (it may still complete: see vdi list)", r.Name)
	case errors.Is(err, core.ErrNoVDI):
		return nil, snapErr(r.Name, r.Tag, r.Snap, err)
	case err != nil:
		return nil, vdiErr(r.Name, err)
	}
	return map[string]uint32{"vid": rep.VID, "snapshot_vid": snap.ID}, nil
}

// flattenJobs are the flattens this node runs for admin requests (the
// core's own flatten runs at the attacher; a job attaches the VDI first
// if nobody has, and detaches it at the end).
type flattenJobs struct {
	mu   sync.Mutex
	jobs map[uint32]*flattenJob
}

type flattenJob struct {
	name   string
	vid    uint32
	total  uint32
	copied uint32 // the last progress seen
	done   bool
	ended  time.Time
	err    error
}

// errClaimed: a local client holds the VDI, but has not attached it (yet).
var errClaimed = errors.New("VDI held by a local client")

// flattenKeep is how long the outcome of a finished flatten stays
// available to vdi.flatten.status.
const flattenKeep = 10 * time.Minute

// vdiFlatten starts the flatten of r.Name where it can run: at the node
// that has the VDI attached (forwarded there), else here.
func (d *Daemon) vdiFlatten(ctx context.Context, r *AdminRequest) (any, error) {
	v, err := d.vdiByName(ctx, r.Name)
	if err != nil {
		return nil, err
	}
	if !v.Table {
		return FlattenInfo{Name: v.Name, VID: v.ID, Node: d.self.Addr, Scanned: v.Objects(), Total: v.Objects(), Done: true}, nil
	}
	if v.Owner != 0 && v.Owner != d.self.ID {
		ms, err := d.members(ctx)
		if err != nil {
			return nil, err
		}
		for _, m := range ms {
			if m.ID != v.Owner || m.Incarnation != v.OwnerInc {
				continue
			}
			if r.Forwarded {
				return nil, fmt.Errorf("VDI %q is attached at node %s, not here: flatten it there", r.Name, m.Addr)
			}
			b, err := d.callMember(ctx, m, &AdminRequest{Cmd: "vdi.flatten", Name: r.Name, Forwarded: true})
			if err != nil {
				return nil, fmt.Errorf("VDI %q is attached at node %s, which runs its flatten, and which failed: %w", r.Name, m.Addr, err)
			}
			return json.RawMessage(b), nil
		}
		// Attached by a node that is gone: the lock is free to take here.
	}
	return d.startFlatten(ctx, v)
}

func (d *Daemon) startFlatten(ctx context.Context, v core.VDI) (FlattenInfo, error) {
	f := &d.flattens
	f.mu.Lock()
	if f.jobs == nil {
		f.jobs = map[uint32]*flattenJob{}
	}
	for vid, j := range f.jobs {
		if j.done && time.Since(j.ended) > flattenKeep {
			delete(f.jobs, vid)
		}
	}
	if j := f.jobs[v.ID]; j == nil || j.done {
		j = &flattenJob{name: v.Name, vid: v.ID, total: v.Objects()}
		f.jobs[v.ID] = j
		go d.runFlatten(j)
	}
	f.mu.Unlock()
	return d.flattenStatus(ctx, v.ID)
}

// runFlatten flattens j's VDI, attaching it here first unless this node
// has it attached already (for an NBD client, say). If that attachment
// goes away meanwhile (the client disconnected), it attaches and goes on.
func (d *Daemon) runFlatten(j *flattenJob) {
	ctx := context.Background()
	d.log.Info("flatten started", "vdi", j.name, "vid", fmt.Sprintf("%06x", j.vid))
	stop := make(chan struct{})
	go func() { // progress, so that the last figures survive the end
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				_, _ = d.flattenStatus(ctx, j.vid)
			}
		}
	}()
	var err error
	for attempt := 0; ; attempt++ {
		err = d.flattenOnce(ctx, j)
		if !(errors.Is(err, core.ErrLocked) || errors.Is(err, errClaimed)) || attempt == 2 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	close(stop)
	_, _ = d.flattenStatus(ctx, j.vid)
	if errors.Is(err, core.ErrLocked) && !errors.Is(err, errClaimed) {
		err = fmt.Errorf("VDI %q was attached elsewhere: flatten it at the node that has it", j.name)
	}
	d.flattens.mu.Lock()
	j.done, j.err, j.ended = true, err, time.Now()
	d.flattens.mu.Unlock()
	d.log.Info("flatten ended", "vdi", j.name, "copied", j.copied, "err", err)
}

func (d *Daemon) flattenOnce(ctx context.Context, j *flattenJob) error {
	here := false
	if err := d.Query(ctx, func(n *core.Node) {
		v := n.Cluster().VDI(j.vid)
		here = v != nil && v.Owner == d.self.ID && v.OwnerInc == d.self.Incarnation && n.Attached(j.vid)
	}); err != nil {
		return err
	}
	if !here {
		release, ok := d.claim(j.name)
		if !ok {
			return fmt.Errorf("%w: VDI %q is held by another client of this node", errClaimed, j.name)
		}
		defer release()
		if _, err := d.do(ctx, &core.Request{Type: core.ReqAttach, VID: j.vid}); err != nil {
			return err
		}
		defer func() {
			_, _ = d.do(ctx, &core.Request{Type: core.ReqDetach, VID: d.current(ctx, j.vid)})
		}()
	}
	_, err := d.do(ctx, &core.Request{Type: core.ReqFlatten, VID: j.vid})
	return err
}

// flattenStatus reports the progress of this node's flatten of vid.
func (d *Daemon) flattenStatus(ctx context.Context, vid uint32) (FlattenInfo, error) {
	d.flattens.mu.Lock()
	j := d.flattens.jobs[vid]
	d.flattens.mu.Unlock()
	if j == nil {
		return FlattenInfo{}, fmt.Errorf("no flatten of VDI %06x at this node (%s)", vid, d.self.Addr)
	}
	var st core.FlattenStatus
	running := false
	if err := d.Query(ctx, func(n *core.Node) {
		for _, f := range n.Flattens() {
			if f.VID == vid {
				st, running = f, true
			}
		}
	}); err != nil {
		return FlattenInfo{}, err
	}
	d.flattens.mu.Lock()
	defer d.flattens.mu.Unlock()
	info := FlattenInfo{Name: j.name, VID: vid, Node: d.self.Addr, Total: j.total}
	if running {
		j.copied = max(j.copied, st.Copied)
		info.Scanned, info.Total = st.Scanned, st.Total
	}
	info.Copied = j.copied
	if j.done {
		info.Done = true
		if j.err != nil {
			info.Error = j.err.Error()
		} else {
			info.Scanned = info.Total
		}
	}
	return info, nil
}

// usage fills in the Used and Shared figures of rows (live VDIs): Used
// counts the objects of its own that hold data, Shared the objects its
// table takes from its ancestors, each times the object size, as
// Sheepdog's `dog vdi list` does. have is the set of data objects some
// member holds.
func (d *Daemon) usage(ctx context.Context, vdis []core.VDI, rows []VDIRow, have map[core.OID]bool, perVID map[uint32]uint64) {
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	for i, v := range vdis {
		own, shared := perVID[v.ID], uint64(0)
		if !v.Table {
			rows[i].Used = min(own*v.ObjectSize(), v.Size)
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			rep, err := d.Do(ctx, &core.Request{Type: core.ReqTable, VID: v.ID, Exact: true})
			if err == nil && rep.Code == core.OK {
				own = 0
				for idx := 0; 4*idx+4 <= len(rep.Data); idx++ {
					if binary.LittleEndian.Uint32(rep.Data[4*idx:]) != 0 {
						shared++
					} else if have[core.DataOID(v.ID, uint32(idx))] {
						own++
					}
				}
			}
			rows[i].Used = min(own*v.ObjectSize(), v.Size)
			rows[i].Shared = min(shared*v.ObjectSize(), v.Size)
		}()
	}
	wg.Wait()
}
