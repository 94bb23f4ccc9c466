package core

import (
	"slices"
	"strings"
)

// VDI is a virtual disk image as the cluster log knows it: its name, its
// place in the snapshot and clone tree, and its attach lock. Which VDI
// owns the data of each object index is not here: that table (DESIGN.md
// §4) lives in the VDI's table objects, written by its attacher alone,
// so that the first write to a shared object is no cluster log entry.
type VDI struct {
	ID         uint32
	Name       string
	Size       uint64
	Copies     uint8
	BlockShift uint8
	CTime      int64
	Deleted    bool   // deleted; the record stays until nothing references its objects (then it is purged)
	Owner      NodeID // attach lock holder (0: not attached)
	OwnerInc   uint64
	AttachGen  uint64 // increases at every attach; prefixes the attacher's write ids

	Parent   uint32 // the VDI this one was made from: the snapshot of a clone or rollback, or the working VDI's previous id (0: none)
	Root     uint32 // the family: the top of the tree it was made in (reclaim reads the tables of one family)
	SnapID   uint32 // snapshots: 1, 2, … per name
	NextSnap uint32 // working VDIs: the id their next snapshot takes
	Tag      string // snapshots: the tag given, if any
	SnapTime int64  // set on snapshots, which are read-only
	Clone    bool   // made by clone
	Table    bool   // has an inode table: some of its objects may be inherited from ancestors
	Building bool   // its table is being built (build.go): no client I/O yet
	// SealVersion is set on a snapshot once its objects were fenced and
	// re-stamped (build.go): every copy of one of its objects older than
	// this is the leftover of a write that never completed, and is no
	// copy at all.
	SealVersion uint64
}

// ObjectSize is the size of the VDI's data objects.
func (v *VDI) ObjectSize() uint64 { return 1 << v.BlockShift }

// Objects is the number of data objects the VDI spans.
func (v *VDI) Objects() uint32 {
	return uint32((v.Size + v.ObjectSize() - 1) >> v.BlockShift)
}

// IsSnapshot reports whether v is a snapshot (read-only).
func (v *VDI) IsSnapshot() bool { return v.SnapTime != 0 }

// readOnly reports whether writes to v's objects are refused: snapshots
// and deleted VDIs. (A building VDI takes its builder's table writes.)
func (v *VDI) readOnly() bool { return v.Deleted || v.SnapTime != 0 }

// VDI returns the VDI with id vid (live, or deleted but not yet purged).
func (s *ClusterState) VDI(vid uint32) *VDI { return s.vdis[vid] }

// LookupVDI returns the live working VDI called name.
func (s *ClusterState) LookupVDI(name string) *VDI {
	if vid, ok := s.names[name]; ok {
		return s.vdis[vid]
	}
	return nil
}

// LookupSnapshot returns the live snapshot of name with tag (if tag is
// not empty) or snapshot id id.
func (s *ClusterState) LookupSnapshot(name, tag string, id uint32) *VDI {
	for _, vid := range s.sortedVIDs() {
		v := s.vdis[vid]
		if v.Deleted || !v.IsSnapshot() || v.Name != name {
			continue
		}
		if (tag != "" && v.Tag == tag) || (tag == "" && id != 0 && v.SnapID == id) {
			return v
		}
	}
	return nil
}

// VDIs returns copies of the live VDIs (working VDIs and snapshots) in
// VDI id order, as Sheepdog lists them.
func (s *ClusterState) VDIs() []VDI {
	out := make([]VDI, 0, len(s.vdis))
	for _, vid := range s.sortedVIDs() {
		if v := s.vdis[vid]; !v.Deleted {
			out = append(out, *v)
		}
	}
	return out
}

// Records returns copies of every VDI record, deleted ones included, in
// VDI id order.
func (s *ClusterState) Records() []VDI {
	out := make([]VDI, 0, len(s.vdis))
	for _, vid := range s.sortedVIDs() {
		out = append(out, *s.vdis[vid])
	}
	return out
}

// Retired reports whether vid belonged to a VDI that was purged: its id
// is never given out again, so that a stale copy of one of its objects
// cannot come back as another VDI's.
func (s *ClusterState) Retired(vid uint32) bool { _, ok := s.retired[vid]; return ok }

// FamilyGen is the generation of the family rooted at root: it changes
// whenever a VDI is made in it (reclaim checks it did not change while it
// read the family's tables).
func (s *ClusterState) FamilyGen(root uint32) uint64 { return s.families[root] }

func (s *ClusterState) sortedVIDs() []uint32 {
	vids := make([]uint32, 0, len(s.vdis))
	for vid := range s.vdis {
		vids = append(vids, vid)
	}
	slices.Sort(vids)
	return vids
}

// Successor is the working VDI that snapshot v's name has now, if that
// descends from v, else nil: where a client of the VDI from before the
// snapshot goes on reading and writing.
func (s *ClusterState) Successor(v *VDI) *VDI {
	w := s.LookupVDI(v.Name)
	for x, steps := w, 0; x != nil && steps <= len(s.vdis); steps++ {
		if x.Parent == v.ID {
			return w
		}
		x = s.vdis[x.Parent]
	}
	return nil
}

// Children returns the live and deleted VDIs whose parent is vid, in id
// order.
func (s *ClusterState) Children(vid uint32) []*VDI {
	var out []*VDI
	for _, id := range s.sortedVIDs() {
		if v := s.vdis[id]; v.Parent == vid {
			out = append(out, v)
		}
	}
	return out
}

func validName(name string) bool {
	return name != "" && len(name) <= maxVDINameLen && !strings.ContainsAny(name, "@/\x00")
}

// validTag: Sheepdog's -s takes a snapshot id or a tag, so a tag may not
// be a number.
func validTag(tag string) bool {
	if len(tag) > maxVDINameLen || strings.ContainsAny(tag, "@/\x00") {
		return false
	}
	if tag == "" {
		return true
	}
	return strings.Trim(tag, "0123456789") != ""
}

// allocVID returns the first free VDI id at or after the hash of name.
func (s *ClusterState) allocVID(name string) (uint32, bool) {
	vid := HashVDIName(name)
	for i := 0; i < MaxVDIs; i++ {
		if _, retired := s.retired[vid]; vid != 0 && s.vdis[vid] == nil && !retired {
			return vid, true
		}
		vid = (vid + 1) & (MaxVDIs - 1)
	}
	return 0, false
}

// nextSnapID is the id the next snapshot of a new VDI called name takes:
// after every live snapshot of that name (of a deleted VDI, say), so that
// name and id pick one snapshot.
func (s *ClusterState) nextSnapID(name string) uint32 {
	next := uint32(1)
	for _, v := range s.vdis {
		if !v.Deleted && v.IsSnapshot() && v.Name == name {
			next = max(next, v.SnapID+1)
		}
	}
	return next
}

func (s *ClusterState) tagTaken(name, tag string) bool {
	return tag != "" && s.LookupSnapshot(name, tag, 0) != nil
}

// attachedLive reports whether v's attach lock is held by a live member.
func (s *ClusterState) attachedLive(v *VDI) bool {
	return v.Owner != 0 && s.IsMember(v.Owner, v.OwnerInc)
}

// building reports whether v or one of its children is building (its
// table is being made from v's).
func (s *ClusterState) building(v *VDI) bool {
	if v.Building {
		return true
	}
	for _, c := range s.vdis {
		if c.Parent == v.ID && c.Building {
			return true
		}
	}
	return false
}

func (s *ClusterState) createVDI(c *Cmd) Result {
	if !s.Formatted {
		return Result{Code: ErrNotFormatted}
	}
	if !validName(c.Name) {
		return Result{Code: ErrInvalid}
	}
	if s.LookupVDI(c.Name) != nil {
		return Result{Code: ErrVDIExists}
	}
	copies, shift := c.Copies, c.BlockShift
	if copies == 0 {
		copies = s.Copies
	}
	if shift == 0 {
		shift = s.BlockShift
	}
	if shift < MinBlockShift || shift > MaxBlockShift || c.Size == 0 || c.Size > maxVDISize ||
		(c.Size+(1<<shift)-1)>>shift > MaxDataObjs {
		return Result{Code: ErrInvalid}
	}
	vid, ok := s.allocVID(c.Name)
	if !ok {
		return Result{Code: ErrFull}
	}
	v := &VDI{ID: vid, Name: c.Name, Size: c.Size, Copies: copies, BlockShift: shift, CTime: c.Time, Root: vid,
		NextSnap: s.nextSnapID(c.Name)}
	s.vdis[vid] = v
	s.names[v.Name] = vid
	return Result{VID: vid}
}

// derive makes a new VDI from parent p, to be built (its table made from
// p's) before it serves I/O: the working VDI of a snapshot, a clone, a
// rollback. The builder writes its table under the new VDI's first
// attach generation.
func (s *ClusterState) derive(p *VDI, name string, t int64) (*VDI, Code) {
	vid, ok := s.allocVID(name)
	if !ok {
		return nil, ErrFull
	}
	s.AttachGen++
	v := &VDI{ID: vid, Name: name, Size: p.Size, Copies: p.Copies, BlockShift: p.BlockShift, CTime: t,
		Parent: p.ID, Root: p.Root, Table: true, Building: true, AttachGen: s.AttachGen}
	s.vdis[vid] = v
	s.names[name] = vid
	s.families[p.Root]++
	return v, OK
}

// snapshot freezes the working VDI called c.Name as a snapshot, which
// keeps its id (as in Sheepdog), and makes a new working VDI under the
// name whose parent it is. The attach lock moves with the name: the
// attacher goes on writing, to the new VDI, once that is built. One
// entry does all of it, so two snapshots at once are simply applied one
// after the other (Sheepdog's two-step write lost tags and data).
func (s *ClusterState) snapshot(c *Cmd) Result {
	v := s.LookupVDI(c.Name)
	if v == nil {
		return Result{Code: ErrNoVDI}
	}
	if s.building(v) {
		return Result{Code: ErrBusy, VID: v.ID}
	}
	if !validTag(c.Tag) {
		return Result{Code: ErrInvalid, VID: v.ID}
	}
	if s.tagTaken(v.Name, c.Tag) {
		return Result{Code: ErrTagExists, VID: v.ID}
	}
	w, code := s.derive(v, v.Name, c.Time)
	if code != OK {
		return Result{Code: code}
	}
	w.NextSnap = v.NextSnap + 1
	w.Owner, w.OwnerInc = v.Owner, v.OwnerInc
	v.SnapTime, v.Tag, v.SnapID = max(c.Time, 1), c.Tag, v.NextSnap
	v.Owner, v.OwnerInc = 0, 0
	return Result{VID: w.ID, Snap: v.ID}
}

// clone makes a writable VDI c.Dst from the snapshot c.VID.
func (s *ClusterState) clone(c *Cmd) Result {
	src := s.vdis[c.VID]
	if src == nil || src.Deleted {
		return Result{Code: ErrNoVDI}
	}
	if !src.IsSnapshot() {
		return Result{Code: ErrInvalid, VID: src.ID} // clones are made from snapshots
	}
	if !validName(c.Dst) {
		return Result{Code: ErrInvalid}
	}
	if s.LookupVDI(c.Dst) != nil {
		return Result{Code: ErrVDIExists}
	}
	v, code := s.derive(src, c.Dst, c.Time)
	if code != OK {
		return Result{Code: code}
	}
	v.Clone = true
	v.NextSnap = s.nextSnapID(c.Dst)
	return Result{VID: v.ID, Snap: src.ID}
}

// rollback replaces the working VDI called c.Name with a new one whose
// parent is the snapshot c.VID, as Sheepdog's client does (delete, then
// create from the snapshot). Later snapshots stay: the tree branches.
func (s *ClusterState) rollback(c *Cmd) Result {
	snap := s.vdis[c.VID]
	if snap == nil || snap.Deleted || !snap.IsSnapshot() || snap.Name != c.Name {
		return Result{Code: ErrNoVDI}
	}
	next := s.nextSnapID(c.Name)
	if w := s.LookupVDI(c.Name); w != nil {
		if s.attachedLive(w) {
			return Result{Code: ErrLocked, VID: w.ID}
		}
		if s.building(w) {
			return Result{Code: ErrBusy, VID: w.ID}
		}
		next = max(next, w.NextSnap)
		s.markDeleted(w)
	}
	v, code := s.derive(snap, c.Name, c.Time)
	if code != OK {
		return Result{Code: code}
	}
	v.NextSnap = next
	return Result{VID: v.ID, Snap: snap.ID}
}

// built ends the build of c.VID: it serves I/O from now on, and its
// attacher (the one of a live snapshot) writes under a new generation,
// so that a builder still running somewhere cannot write its table.
func (s *ClusterState) built(c *Cmd) Result {
	v := s.vdis[c.VID]
	if v == nil || v.Deleted {
		return Result{Code: ErrNoVDI}
	}
	if !v.Building {
		return Result{VID: v.ID, Gen: v.AttachGen}
	}
	v.Building = false
	if p := s.vdis[v.Parent]; p != nil && p.IsSnapshot() && p.SealVersion == 0 {
		p.SealVersion = c.Gen
	}
	if v.Owner != 0 {
		s.AttachGen++
		v.AttachGen = s.AttachGen
	}
	return Result{VID: v.ID, Gen: v.AttachGen}
}

// flattened records that c.VID no longer shares any object: it leaves
// its family and its table objects are dropped.
func (s *ClusterState) flattened(c *Cmd) Result {
	v := s.vdis[c.VID]
	if v == nil || v.Deleted {
		return Result{Code: ErrNoVDI}
	}
	if v.Building || v.IsSnapshot() {
		return Result{Code: ErrInvalid, VID: v.ID}
	}
	v.Table, v.Parent, v.Root = false, 0, v.ID
	return Result{VID: v.ID}
}

// deleteVDI deletes the working VDI c.Name, or its snapshot given by
// c.Tag or c.Snap, or exactly c.VID. The record stays (deleted) until
// reclaim finds nothing referencing its objects.
func (s *ClusterState) deleteVDI(c *Cmd) Result {
	var v *VDI
	switch {
	case c.VID != 0:
		if v = s.vdis[c.VID]; v != nil && v.Deleted {
			v = nil
		}
	case c.Tag != "" || c.Snap != 0:
		v = s.LookupSnapshot(c.Name, c.Tag, c.Snap)
	default:
		v = s.LookupVDI(c.Name)
	}
	if v == nil {
		return Result{Code: ErrNoVDI}
	}
	if s.attachedLive(v) && !c.Force {
		return Result{Code: ErrLocked, VID: v.ID}
	}
	if s.building(v) {
		return Result{Code: ErrBusy, VID: v.ID}
	}
	s.markDeleted(v)
	return Result{VID: v.ID}
}

func (s *ClusterState) markDeleted(v *VDI) {
	v.Deleted = true
	v.Owner, v.OwnerInc = 0, 0
	if s.names[v.Name] == v.ID {
		delete(s.names, v.Name)
	}
}

// reclaimCheck succeeds if the family c.VID did not change since
// generation c.Gen, when reclaim read its tables.
func (s *ClusterState) reclaimCheck(c *Cmd) Result {
	if s.families[c.VID] != c.Gen {
		return Result{Code: ErrBusy}
	}
	return Result{}
}

// purge removes the record of a deleted VDI that nothing references any
// more (checked as for reclaimCheck, with c.Gen the family's generation
// and c.Inc its root); its children move up to its parent, and its id is
// never given out again.
func (s *ClusterState) purge(c *Cmd) Result {
	v := s.vdis[c.VID]
	if v == nil {
		return Result{} // purged already
	}
	if !v.Deleted || s.families[v.Root] != c.Gen {
		return Result{Code: ErrBusy, VID: v.ID}
	}
	for _, x := range s.vdis {
		if x.Parent == v.ID {
			x.Parent = v.Parent
		}
	}
	delete(s.vdis, v.ID)
	s.retired[v.ID] = struct{}{}
	for _, x := range s.vdis {
		if x.Root == v.Root {
			return Result{VID: v.ID}
		}
	}
	delete(s.families, v.Root)
	return Result{VID: v.ID}
}

func (s *ClusterState) resize(c *Cmd) Result {
	v := s.LookupVDI(c.Name)
	if v == nil {
		return Result{Code: ErrNoVDI}
	}
	if c.Size < v.Size || c.Size > maxVDISize || c.Size>>v.BlockShift > MaxDataObjs {
		return Result{Code: ErrInvalid, VID: v.ID}
	}
	v.Size = c.Size
	return Result{VID: v.ID}
}

func (s *ClusterState) attach(c *Cmd) Result {
	v := s.vdis[c.VID]
	if v == nil || v.Deleted {
		return Result{Code: ErrNoVDI}
	}
	if v.IsSnapshot() {
		return Result{Code: ErrPerm, VID: v.ID}
	}
	if v.Building {
		return Result{Code: ErrBusy, VID: v.ID}
	}
	if v.Owner == c.NodeID && v.OwnerInc == c.Inc {
		return Result{VID: v.ID, Gen: v.AttachGen}
	}
	if s.attachedLive(v) && !c.Force {
		return Result{Code: ErrLocked, VID: v.ID}
	}
	s.AttachGen++
	v.Owner, v.OwnerInc, v.AttachGen = c.NodeID, c.Inc, s.AttachGen
	return Result{VID: v.ID, Gen: v.AttachGen}
}

func (s *ClusterState) detach(c *Cmd) Result {
	v := s.vdis[c.VID]
	if v == nil {
		return Result{Code: ErrNoVDI}
	}
	if v.Owner == c.NodeID && v.OwnerInc == c.Inc {
		v.Owner, v.OwnerInc = 0, 0
	}
	return Result{VID: v.ID}
}

func encodeVDI(e *enc, v *VDI) {
	e.u32(v.ID)
	e.str(v.Name)
	e.u64(v.Size)
	e.u8(v.Copies)
	e.u8(v.BlockShift)
	e.i64(v.CTime)
	e.bool(v.Deleted)
	e.u64(uint64(v.Owner))
	e.u64(v.OwnerInc)
	e.u64(v.AttachGen)
	e.u32(v.Parent)
	e.u32(v.Root)
	e.u32(v.SnapID)
	e.u32(v.NextSnap)
	e.str(v.Tag)
	e.i64(v.SnapTime)
	e.bool(v.Clone)
	e.bool(v.Table)
	e.bool(v.Building)
	e.u64(v.SealVersion)
}

func decodeVDI(d *dec, legacy bool) *VDI {
	v := &VDI{ID: d.u32(), Name: d.str(), Size: d.u64(), Copies: d.u8(), BlockShift: d.u8(), CTime: d.i64(),
		Deleted: d.bool(), Owner: NodeID(d.u64()), OwnerInc: d.u64(), AttachGen: d.u64()}
	if legacy {
		v.Root, v.NextSnap = v.ID, 1
		return v
	}
	v.Parent, v.Root, v.SnapID, v.NextSnap = d.u32(), d.u32(), d.u32(), d.u32()
	v.Tag, v.SnapTime = d.str(), d.i64()
	v.Clone, v.Table, v.Building, v.SealVersion = d.bool(), d.bool(), d.bool(), d.u64()
	return v
}
