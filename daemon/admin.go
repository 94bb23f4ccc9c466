package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/sheepdog-go/sheepdog/core"
)

// AdminRequest is one admin RPC (JSON over the admin channel of the
// transport, on the node's --listen address).
type AdminRequest struct {
	Cmd        string `json:"cmd"`
	Name       string `json:"name,omitempty"`
	Size       uint64 `json:"size,omitempty"`
	Copies     int    `json:"copies,omitempty"`
	BlockShift int    `json:"block_size_shift,omitempty"`
	Prealloc   bool   `json:"prealloc,omitempty"`
	Force      bool   `json:"force,omitempty"`
	Offset     uint64 `json:"offset,omitempty"`
	Length     uint64 `json:"length,omitempty"`
	Data       []byte `json:"data,omitempty"`
	VID        uint32 `json:"vid,omitempty"`
	// Snapshots: a snapshot of Name is named by its tag or its id.
	Tag       string `json:"tag,omitempty"`
	Snap      uint32 `json:"snap_id,omitempty"`
	Dst       string `json:"dst,omitempty"`       // vdi.clone: the new VDI
	Forwarded bool   `json:"forwarded,omitempty"` // vdi.flatten sent on by another node: do not forward again
}

// NodeRow describes a member for `node list`.
type NodeRow struct {
	Index       int    `json:"index"`
	ID          string `json:"id"`
	Addr        string `json:"addr"`
	NBD         string `json:"nbd,omitempty"`
	VNodes      int    `json:"vnodes"`
	Zone        uint32 `json:"zone"`
	Incarnation uint64 `json:"incarnation"`
	Capacity    uint64 `json:"capacity"`
}

// ClusterInfo answers `cluster info`.
type ClusterInfo struct {
	Formatted  bool        `json:"formatted"`
	Copies     int         `json:"copies"`
	BlockShift int         `json:"block_size_shift"`
	CTime      int64       `json:"ctime"`
	Epoch      uint32      `json:"epoch"`
	Leader     string      `json:"leader"`
	Voters     []string    `json:"voters"`
	Nodes      []NodeRow   `json:"nodes"`
	History    []EpochInfo `json:"history"`
	Shutdown   bool        `json:"shutdown"`
}

// EpochInfo is one epoch of the history.
type EpochInfo struct {
	Epoch uint32   `json:"epoch"`
	Time  int64    `json:"time"`
	Nodes []string `json:"nodes"`
}

// NodeStatus answers `node info` and feeds `node recovery`.
type NodeStatus struct {
	NodeRow
	Epoch     uint32 `json:"epoch"`
	Serving   bool   `json:"serving"`
	Leader    bool   `json:"leader"`
	Objects   int    `json:"objects"`
	Used      uint64 `json:"used"`
	Free      uint64 `json:"free"`
	Listing   bool   `json:"recovery_listing"`
	Total     int    `json:"recovery_total"`
	Remaining int    `json:"recovery_remaining"`
	Finished  bool   `json:"recovery_finished"`
	AllDone   bool   `json:"recovery_all_done"`
	Dir       string `json:"dir"`
	RecoveryProgress
	Raft RaftRow `json:"raft"`
}

// RaftRow is a node's view of the cluster log's election (`node info`).
type RaftRow struct {
	Term        uint64   `json:"term"`
	Lead        string   `json:"lead,omitempty"`
	State       string   `json:"state"`
	Voters      []string `json:"voters"`
	HeardLeader int64    `json:"heard_leader_ticks"`
	ElectionIn  int      `json:"election_in_ticks"`
}

// VDIRow describes a VDI (a working VDI or a snapshot) for `vdi list`
// and `vdi tree`.
type VDIRow struct {
	Name       string `json:"name"`
	ID         uint32 `json:"vid"`
	Size       uint64 `json:"size"`
	Used       uint64 `json:"used"`   // bytes in objects of its own
	Shared     uint64 `json:"shared"` // bytes in objects it shares with its ancestors
	CTime      int64  `json:"ctime"`
	Copies     int    `json:"copies"`
	BlockShift int    `json:"block_size_shift"`
	Attached   string `json:"attached,omitempty"`
	SnapID     uint32 `json:"snap_id,omitempty"`   // snapshots: 1, 2, … per name
	Tag        string `json:"tag,omitempty"`       // snapshots: the tag given
	SnapTime   int64  `json:"snap_time,omitempty"` // snapshots: when taken (unix seconds)
	Snapshot   bool   `json:"snapshot,omitempty"`
	Clone      bool   `json:"clone,omitempty"`  // made by vdi clone
	Parent     uint32 `json:"parent,omitempty"` // the VDI it was made from (0: none)
	Deleted    bool   `json:"deleted,omitempty"`
}

func vdiRow(v core.VDI) VDIRow {
	r := VDIRow{Name: v.Name, ID: v.ID, Size: v.Size, CTime: v.CTime, Copies: int(v.Copies), BlockShift: int(v.BlockShift),
		SnapID: v.SnapID, Tag: v.Tag, SnapTime: v.SnapTime, Snapshot: v.IsSnapshot(), Clone: v.Clone, Parent: v.Parent, Deleted: v.Deleted}
	if v.Owner != 0 {
		r.Attached = fmt.Sprintf("%x", uint64(v.Owner))
	}
	if !r.Snapshot {
		r.SnapID = 0
	}
	return r
}

// Record is the VDI a row describes, as far as the row tells.
func (r VDIRow) Record() core.VDI {
	v := core.VDI{ID: r.ID, Name: r.Name, Size: r.Size, CTime: r.CTime, Copies: uint8(r.Copies), BlockShift: uint8(r.BlockShift),
		SnapID: r.SnapID, Tag: r.Tag, Clone: r.Clone, Parent: r.Parent, Deleted: r.Deleted}
	if r.Snapshot {
		v.SnapTime = max(r.SnapTime, 1)
	}
	return v
}

// CheckReport answers `vdi check`.
type CheckReport struct {
	Name       string   `json:"name"`
	Objects    uint64   `json:"objects"`   // object slots in the VDI
	Allocated  int      `json:"allocated"` // objects written at least once
	Replicated int      `json:"replicated"`
	Copies     int      `json:"copies"`
	Repaired   uint64   `json:"repaired"`
	Problems   []string `json:"problems,omitempty"`
}

// objectRow is one stored object, for cluster-wide checks.
type objectRow struct {
	OID     uint64 `json:"oid"`
	Version uint64 `json:"version"`
	Deleted bool   `json:"deleted,omitempty"`
}

// holder is one node's copy of an object.
type holder struct {
	Node    core.NodeID
	Version uint64
	Deleted bool
}

func (d *Daemon) onAdmin(ctx context.Context, payload []byte) ([]byte, error) {
	var r AdminRequest
	if err := json.Unmarshal(payload, &r); err != nil {
		return nil, fmt.Errorf("malformed admin request: %w", err)
	}
	out, err := d.admin1(ctx, &r)
	if err != nil {
		return nil, err
	}
	if b, ok := out.([]byte); ok {
		return b, nil
	}
	return json.Marshal(out)
}

func (d *Daemon) do(ctx context.Context, r *core.Request) (core.Reply, error) {
	r.Time = time.Now().Unix()
	rep, err := d.Do(ctx, r)
	if err != nil {
		return rep, err
	}
	if rep.Code != core.OK {
		return rep, rep.Code
	}
	return rep, nil
}

func (d *Daemon) vdiByName(ctx context.Context, name string) (core.VDI, error) {
	var v core.VDI
	found := false
	if err := d.Query(ctx, func(n *core.Node) {
		if x := n.Cluster().LookupVDI(name); x != nil {
			v, found = *x, true
		}
	}); err != nil {
		return v, err
	}
	if !found {
		return v, fmt.Errorf("no VDI named %q", name)
	}
	return v, nil
}

func (d *Daemon) admin1(ctx context.Context, r *AdminRequest) (any, error) {
	switch r.Cmd {
	case "cluster.format":
		copies, shift := r.Copies, r.BlockShift
		if copies == 0 {
			copies = 3
		}
		if shift == 0 {
			shift = core.DefaultBlockShift
		}
		if copies < 1 || copies > 16 || shift < 20 || shift > core.MaxBlockShift {
			return nil, fmt.Errorf("invalid format: copies must be 1..16 and block size shift 20..%d", core.MaxBlockShift)
		}
		_, err := d.do(ctx, &core.Request{Type: core.ReqFormat, Copies: uint8(copies), BlockShift: uint8(shift)})
		if errors.Is(err, core.ErrInvalid) {
			return nil, errors.New("cannot format: the cluster has VDIs")
		}
		return map[string]string{"status": "formatted"}, err
	case "cluster.info":
		return d.clusterInfo(ctx)
	case "cluster.shutdown":
		// The order goes through the cluster log (every node that applies
		// it stops); members are also told directly, in case one would
		// not hear of the commit before the others stop.
		ms, err := d.members(ctx)
		if err != nil {
			return nil, err
		}
		if _, err := d.do(ctx, &core.Request{Type: core.ReqShutdown}); err != nil {
			return nil, err
		}
		for _, m := range ms {
			if m.ID != d.self.ID {
				cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
				_, _ = d.callMember(cctx, m, &AdminRequest{Cmd: "node.stop"})
				cancel()
			}
		}
		go func() {
			time.Sleep(time.Second)
			d.Stop()
		}()
		return map[string]string{"status": "shutting down"}, nil
	case "node.stop":
		d.log.Info("stop requested by the cluster shutdown")
		go func() {
			time.Sleep(500 * time.Millisecond)
			d.Stop()
		}()
		return map[string]string{"status": "stopping"}, nil
	case "node.list":
		ci, err := d.clusterInfo(ctx)
		return ci.Nodes, err
	case "node.info", "node.status":
		return d.nodeStatus(ctx)
	case "node.recovery":
		return d.fanOut(ctx, "node.status")
	case "node.objects":
		return d.objectRows(ctx, r.VID)
	case "peer.msg":
		m, err := core.UnmarshalMessage(r.Data)
		if err != nil {
			return nil, fmt.Errorf("bad peer message: %w", err)
		}
		if m.Type != core.MsgJoin {
			return nil, errors.New("only join messages come through the admin channel")
		}
		if d.enqueue(event{msg: m}) {
			d.kick()
		}
		return map[string]string{}, nil
	case "vdi.create":
		if r.Copies < 0 || r.Copies > 16 || (r.BlockShift != 0 && (r.BlockShift < 20 || r.BlockShift > core.MaxBlockShift)) {
			return nil, errors.New("invalid copies or block size shift")
		}
		rep, err := d.do(ctx, &core.Request{Type: core.ReqCreateVDI, Name: r.Name, Size: r.Size, Copies: uint8(r.Copies), BlockShift: uint8(r.BlockShift)})
		if err != nil {
			return nil, vdiErr(r.Name, err)
		}
		if r.Prealloc {
			if err := d.prealloc(ctx, r.Name, rep.VID, r.Size); err != nil {
				return nil, fmt.Errorf("VDI %q created, but preallocating failed: %w", r.Name, err)
			}
		}
		return map[string]any{"vid": rep.VID}, nil
	case "vdi.delete":
		_, err := d.do(ctx, &core.Request{Type: core.ReqDeleteVDI, Name: r.Name, Tag: r.Tag, Snap: r.Snap, Force: r.Force})
		if r.Tag != "" || r.Snap != 0 {
			return map[string]string{}, snapErr(r.Name, r.Tag, r.Snap, err)
		}
		return map[string]string{}, vdiErr(r.Name, err)
	case "vdi.snapshot":
		return d.vdiSnapshot(ctx, r)
	case "vdi.clone":
		return d.vdiClone(ctx, r)
	case "vdi.rollback":
		return d.vdiRollback(ctx, r)
	case "vdi.flatten":
		return d.vdiFlatten(ctx, r)
	case "vdi.flatten.status":
		return d.flattenStatus(ctx, r.VID)
	case "vdi.info":
		v, err := d.vdiOrSnapshot(ctx, r)
		return vdiRow(v), err
	case "vdi.records":
		var rows []VDIRow
		err := d.Query(ctx, func(n *core.Node) {
			for _, v := range n.Cluster().Records() {
				rows = append(rows, vdiRow(v))
			}
		})
		return rows, err
	case "vdi.resize":
		_, err := d.do(ctx, &core.Request{Type: core.ReqResizeVDI, Name: r.Name, Size: r.Size})
		if errors.Is(err, core.ErrInvalid) {
			return nil, fmt.Errorf("cannot resize %q to %d bytes: a VDI can only grow, up to 4 TiB at 4 MiB objects", r.Name, r.Size)
		}
		return map[string]string{}, vdiErr(r.Name, err)
	case "vdi.list":
		return d.vdiList(ctx)
	case "vdi.read":
		v, err := d.vdiOrSnapshot(ctx, r)
		if err != nil {
			return nil, err
		}
		if r.Length > 8<<20 {
			return nil, errors.New("read at most 8 MiB per request")
		}
		if r.Offset >= v.Size {
			return []byte{}, nil
		}
		n := min(r.Length, v.Size-r.Offset)
		rep, err := d.do(ctx, &core.Request{Type: core.ReqRead, VID: v.ID, Off: r.Offset, Len: n, Exact: v.IsSnapshot()})
		if err != nil {
			return nil, err
		}
		return rep.Data, nil
	case "vdi.check":
		return d.vdiCheck(ctx, r.Name)
	}
	return nil, fmt.Errorf("unknown admin command %q", r.Cmd)
}

func vdiErr(name string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, core.ErrNoVDI):
		return fmt.Errorf("no VDI named %q", name)
	case errors.Is(err, core.ErrVDIExists):
		return fmt.Errorf("VDI %q exists already", name)
	case errors.Is(err, core.ErrLocked):
		return fmt.Errorf("VDI %q is attached (in use); detach it first", name)
	case errors.Is(err, core.ErrNotFormatted):
		return errors.New("the cluster is not formatted: run 'sheepdog cluster format' first")
	case errors.Is(err, core.ErrInvalid):
		return fmt.Errorf("invalid request for VDI %q (name, size or copies)", name)
	}
	return err
}

func (d *Daemon) prealloc(ctx context.Context, name string, vid uint32, size uint64) error {
	release, ok := d.claim(name)
	if !ok {
		return errors.New("attached by another client of this node")
	}
	defer release()
	if _, err := d.do(ctx, &core.Request{Type: core.ReqAttach, VID: vid}); err != nil {
		return err
	}
	defer d.do(context.Background(), &core.Request{Type: core.ReqDetach, VID: vid})
	const step = 64 << 20
	for off := uint64(0); off < size; off += step {
		if _, err := d.do(ctx, &core.Request{Type: core.ReqZero, VID: vid, Off: off, Len: min(step, size-off), NoHole: true}); err != nil {
			return err
		}
	}
	_, err := d.do(ctx, &core.Request{Type: core.ReqFlush, VID: vid})
	return err
}

func (d *Daemon) clusterInfo(ctx context.Context) (ClusterInfo, error) {
	var ci ClusterInfo
	err := d.Query(ctx, func(n *core.Node) {
		cs := n.Cluster()
		ci = ClusterInfo{Formatted: cs.Formatted, Copies: int(cs.Copies), BlockShift: int(cs.BlockShift), CTime: cs.CTime,
			Epoch: cs.Epoch, Leader: fmt.Sprintf("%x", uint64(n.Leader())), Shutdown: cs.Shutdown}
		for _, v := range n.Voters() {
			ci.Voters = append(ci.Voters, fmt.Sprintf("%x", v))
		}
		for i, m := range cs.Nodes {
			ci.Nodes = append(ci.Nodes, nodeRow(i, m))
		}
		for _, h := range cs.History {
			e := EpochInfo{Epoch: h.Epoch, Time: h.Time}
			for _, id := range h.Nodes {
				e.Nodes = append(e.Nodes, fmt.Sprintf("%x", uint64(id)))
			}
			ci.History = append(ci.History, e)
		}
	})
	return ci, err
}

func nodeRow(i int, m core.NodeInfo) NodeRow {
	return NodeRow{Index: i, ID: fmt.Sprintf("%x", uint64(m.ID)), Addr: m.Addr, NBD: m.NBDAddr, VNodes: int(m.VNodes), Zone: m.Zone,
		Incarnation: m.Incarnation, Capacity: m.Capacity}
}

func raftRow(rs core.RaftStatus) RaftRow {
	r := RaftRow{Term: rs.Term, State: rs.State, HeardLeader: rs.HeardLeader, ElectionIn: rs.ElectionIn}
	if rs.Lead != 0 {
		r.Lead = fmt.Sprintf("%x", uint64(rs.Lead))
	}
	for _, v := range rs.Voters {
		r.Voters = append(r.Voters, fmt.Sprintf("%x", uint64(v)))
	}
	return r
}

func (d *Daemon) nodeStatus(ctx context.Context) (NodeStatus, error) {
	var st NodeStatus
	err := d.Query(ctx, func(n *core.Node) {
		r := n.Recovery()
		st = NodeStatus{NodeRow: nodeRow(-1, d.self), Epoch: n.Epoch(), Serving: n.Serving(), Leader: n.IsLeader(),
			Objects: len(n.Objects()), Listing: r.Listing, Total: r.Total, Remaining: r.Remaining, Finished: r.Finished, AllDone: r.AllDone,
			Dir: d.dataPath(), Raft: raftRow(n.RaftStatus())}
		st.RecoveryProgress = d.recoveryProgress(n, r)
		for i, m := range n.Cluster().Nodes {
			if m.ID == d.self.ID {
				st.Index = i
			}
		}
	})
	if err != nil {
		return st, err
	}
	if used, free, err := d.store.Usage(); err == nil {
		st.Used, st.Free = used, free
	}
	return st, nil
}

func (d *Daemon) objectRows(ctx context.Context, vid uint32) ([]objectRow, error) {
	var rows []objectRow
	err := d.Query(ctx, func(n *core.Node) {
		for _, o := range n.Objects() {
			if vid == 0 || o.OID.VID() == vid {
				rows = append(rows, objectRow{OID: uint64(o.OID), Version: o.Meta.Version, Deleted: o.Meta.Deleted})
			}
		}
	})
	return rows, err
}

// members returns the current members' addresses, this node included.
func (d *Daemon) members(ctx context.Context) ([]core.NodeInfo, error) {
	var ms []core.NodeInfo
	err := d.Query(ctx, func(n *core.Node) { ms = slices.Clone(n.Cluster().Nodes) })
	return ms, err
}

// callMember runs an admin command on a member (locally for this node).
func (d *Daemon) callMember(ctx context.Context, m core.NodeInfo, r *AdminRequest) ([]byte, error) {
	if m.ID == d.self.ID {
		out, err := d.admin1(ctx, r)
		if err != nil {
			return nil, err
		}
		return json.Marshal(out)
	}
	c, err := d.dialAdmin(ctx, m.Addr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	b, _ := json.Marshal(r)
	return c.Call(ctx, b)
}

// fanOut asks every member for its status.
func (d *Daemon) fanOut(ctx context.Context, cmd string) ([]NodeStatus, error) {
	ms, err := d.members(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]NodeStatus, len(ms))
	var wg sync.WaitGroup
	for i, m := range ms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			b, err := d.callMember(cctx, m, &AdminRequest{Cmd: cmd})
			if err == nil {
				err = json.Unmarshal(b, &out[i])
			}
			if err != nil {
				out[i] = NodeStatus{NodeRow: nodeRow(i, m)}
				out[i].Dir = "unreachable: " + err.Error()
			}
			out[i].Index = i
		}()
	}
	wg.Wait()
	return out, nil
}

// clusterObjects collects every member's objects of vid (0: all).
func (d *Daemon) clusterObjects(ctx context.Context, vid uint32) (map[uint64][]holder, []core.NodeInfo, error) {
	ms, err := d.members(ctx)
	if err != nil {
		return nil, nil, err
	}
	per := make([][]objectRow, len(ms))
	errs := make([]error, len(ms))
	var wg sync.WaitGroup
	for i, m := range ms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			b, err := d.callMember(cctx, m, &AdminRequest{Cmd: "node.objects", VID: vid})
			if err == nil {
				err = json.Unmarshal(b, &per[i])
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	out := map[uint64][]holder{}
	for i := range ms {
		if errs[i] != nil {
			return nil, nil, fmt.Errorf("node %s: %w", ms[i].Addr, errs[i])
		}
		for _, r := range per[i] {
			out[r.OID] = append(out[r.OID], holder{Node: ms[i].ID, Version: r.Version, Deleted: r.Deleted})
		}
	}
	return out, ms, nil
}

func (d *Daemon) vdiList(ctx context.Context) ([]VDIRow, error) {
	var vdis []core.VDI
	if err := d.Query(ctx, func(n *core.Node) { vdis = n.Cluster().VDIs() }); err != nil {
		return nil, err
	}
	objs, _, err := d.clusterObjects(ctx, 0)
	have := map[core.OID]bool{}
	perVID := map[uint32]uint64{}
	if err == nil {
		for oid, holders := range objs {
			o := core.OID(oid)
			if !o.IsData() {
				continue
			}
			for _, h := range holders {
				if !h.Deleted {
					have[o] = true
					perVID[o.VID()]++
					break
				}
			}
		}
	}
	rows := make([]VDIRow, len(vdis))
	for i, v := range vdis {
		rows[i] = vdiRow(v)
	}
	d.usage(ctx, vdis, rows, have, perVID)
	return rows, nil
}

// vdiCheck verifies (and repairs) every object of a VDI, then confirms
// that each stored object has its full set of identical replicas.
func (d *Daemon) vdiCheck(ctx context.Context, name string) (CheckReport, error) {
	v, err := d.vdiByName(ctx, name)
	if err != nil {
		return CheckReport{}, err
	}
	rep, err := d.do(ctx, &core.Request{Type: core.ReqCheck, VID: v.ID})
	if err != nil {
		return CheckReport{}, fmt.Errorf("check %q: %w", name, err)
	}
	cr := CheckReport{Name: name, Objects: rep.Checked, Repaired: rep.Repaired}
	objs, _, err := d.clusterObjects(ctx, v.ID)
	if err != nil {
		return cr, err
	}
	var ring *core.Ring
	_ = d.Query(ctx, func(n *core.Node) { ring = n.Ring() })
	want := ring.EffectiveCopies(int(v.Copies))
	cr.Copies = want
	oids := make([]uint64, 0, len(objs))
	for oid := range objs {
		oids = append(oids, oid)
	}
	slices.Sort(oids)
	for _, oid := range oids {
		holders := objs[oid]
		cr.Allocated++
		place := ring.Place(nil, core.OID(oid), int(v.Copies))
		ok := len(holders) == want
		for _, h := range holders {
			if h.Version != holders[0].Version || !slices.Contains(place, h.Node) {
				ok = false
			}
		}
		if ok {
			cr.Replicated++
		} else if len(cr.Problems) < 20 {
			cr.Problems = append(cr.Problems, fmt.Sprintf("object %016x: %d replicas, want %d identical ones on %v", oid, len(holders), want, place))
		}
	}
	return cr, nil
}

// sendToAddress delivers a message to a node known only by address
// (joining through a seed) over that address's admin channel.
func (d *Daemon) sendToAddress(addr string, b []byte) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := d.dialAdmin(ctx, addr)
	if err != nil {
		d.seedFailed(addr, "cannot reach seed", err)
		return
	}
	defer c.Close()
	req, _ := json.Marshal(&AdminRequest{Cmd: "peer.msg", Data: b})
	if _, err := c.Call(ctx, req); err != nil {
		d.seedFailed(addr, "seed refused join", err)
	}
}
