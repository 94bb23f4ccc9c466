package core

import (
	"fmt"
	"slices"
)

// The leader's jobs: it builds the table of every new VDI made from
// another (build.go) and reclaims the objects of deleted VDIs that
// nothing references (reclaim.go). A job is state on the leader only:
// a new leader starts the jobs again from the cluster state, and every
// step is safe to repeat.
type jobs struct {
	builds   map[uint32]*buildJob
	reclaims map[uint32]*reclaimPass // by family root
	clean    map[uint32]cleanMark    // families whose last pass found nothing to do
	scanned  int64
}

func (j *jobs) init() {
	j.builds = map[uint32]*buildJob{}
	j.reclaims = map[uint32]*reclaimPass{}
	j.clean = map[uint32]cleanMark{}
}

func (j *jobs) stop() {
	clear(j.builds)
	clear(j.reclaims)
	clear(j.clean)
}

// jobScanTicks is how often the leader looks for VDIs to build or reclaim.
const jobScanTicks = 5

// tickJobs starts the jobs the cluster state asks for.
func (n *Node) tickJobs() {
	if !n.isLeader || !n.serving {
		if len(n.jobs.builds)+len(n.jobs.reclaims) > 0 {
			n.jobs.stop()
		}
		return
	}
	if n.now-n.jobs.scanned < jobScanTicks {
		return
	}
	n.jobs.scanned = n.now
	families := map[uint32]bool{}
	for _, v := range n.cs.Records() {
		if v.Building && !v.Deleted && n.jobs.builds[v.ID] == nil {
			n.startBuild(v.ID)
		}
		if v.Deleted {
			families[v.Root] = true
		}
	}
	roots := make([]uint32, 0, len(families))
	for root := range families {
		roots = append(roots, root)
	}
	slices.Sort(roots)
	for _, root := range roots {
		n.maybeReclaim(root)
	}
}

// Jobs describes the leader's jobs in progress, for status and problem
// reports.
func (n *Node) Jobs() []string {
	var out []string
	for _, vid := range sortedU32Keys(n.jobs.builds) {
		out = append(out, n.jobs.builds[vid].String())
	}
	for _, root := range sortedU32Keys(n.jobs.reclaims) {
		out = append(out, n.jobs.reclaims[root].String())
	}
	return out
}

func sortedU32Keys[V any](m map[uint32]V) []uint32 {
	out := make([]uint32, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

type buildPhase uint8

const (
	buildSealing    buildPhase = iota + 1 // fencing the parent and listing its objects
	buildStamping                         // re-stamping a new snapshot's objects
	buildReading                          // reading the parent's table
	buildWriting                          // writing the new table
	buildCommitting                       // proposing CmdBuilt
)

func (p buildPhase) String() string {
	return [...]string{"?", "sealing", "stamping", "reading", "writing", "committing"}[min(int(p), 5)]
}

// buildJob makes the table of a new VDI from its parent's: an entry the
// parent inherits stays, an object the parent has itself becomes the
// parent's, the rest stays 0. Building first fences the parent (a
// barrier): after it nothing writes the parent again (a snapshot's old
// working VDI stops taking writes there), and its listing is final.
//
// A new snapshot's objects are then re-stamped: every member holding an
// object at the version the seal found (the newest any member holds)
// gives it a version of the current epoch. A write that was in flight on
// nodes cut off at the time of the snapshot, applied on some of its
// replicas only, has an older version: when those nodes come back,
// recovery's newest version is still the snapshot's, and the snapshot
// never changes. (For a working VDI such a write may take effect late;
// it was never acknowledged.)
//
// A builder of the same epoch before this one (a deposed leader) may have
// re-stamped some copies and not others: then the newest version is its
// re-stamp, which is this build's too, and re-stamping only the copies at
// that version would leave the others (on the replicas it had not
// reached, the primary perhaps) below the seal: no longer valid, read as
// holes, though they hold the snapshot's data. So for such an object the
// versions its replicas hold are re-stamped as well: they recovered the
// object in this epoch and no write to it ran since the first build's
// barrier, so each copy they hold is the one that build found.
type buildJob struct {
	vid, parent uint32
	gen         uint64 // the new VDI's first attach generation: the builder's writes carry it
	phase       buildPhase
	seal        uint64              // the version a new snapshot's objects were re-stamped with
	own         map[uint32]bool     // indices of the parent's own objects
	ptab        map[uint32][]uint32 // the parent's table objects, by chunk
	writes      []uint32            // chunks still to write
	left        int
}

func (j *buildJob) String() string {
	return fmt.Sprintf("build %06x from %06x: %v, %d left", j.vid, j.parent, j.phase, j.left)
}

func (n *Node) startBuild(vid uint32) {
	v := n.cs.VDI(vid)
	p := n.cs.VDI(v.Parent)
	if p == nil {
		return
	}
	j := &buildJob{vid: vid, parent: p.ID, gen: v.AttachGen, phase: buildSealing, own: map[uint32]bool{}, ptab: map[uint32][]uint32{}}
	n.jobs.builds[vid] = j
	n.note(fmt.Sprintf("node %d: building %06x from %06x", n.id, vid, p.ID))
	n.runBarrier(p.ID, n.applied, true, func(objs, held []ObjVersion) {
		if !n.buildCurrent(j) {
			return
		}
		var chunks []uint32
		for _, o := range objs {
			switch {
			case o.OID.IsData():
				j.own[o.OID.Index()] = true
			case o.OID.IsTable():
				chunks = append(chunks, o.OID.Index())
			}
		}
		if p := n.cs.VDI(j.parent); p != nil && p.IsSnapshot() && p.SealVersion == 0 {
			n.buildStamp(j, objs, held, func() { n.buildRead(j, chunks) })
			return
		}
		n.buildRead(j, chunks)
	})
}

// restampSeq is the sequence part of a re-stamped version: above any
// write of that epoch (none reaches a read-only object).
const restampSeq = 1 << 31

// buildStamp re-stamps the parent's objects on every member, all in one
// epoch; an epoch change starts the build over. objs are the objects with
// their newest versions, held the versions their replicas hold (the
// barrier's lists).
func (n *Node) buildStamp(j *buildJob, objs, held []ObjVersion, then func()) {
	j.phase = buildStamping
	epoch := n.epoch
	version := uint64(epoch)<<32 | restampSeq
	j.seal = version
	objs = restampList(objs, held, version)
	if len(objs) == 0 {
		then() // nothing to re-stamp; anything that appears later is a leftover
		return
	}
	j.left = len(n.cs.Nodes)
	var ask func(to NodeID)
	ask = func(to NodeID) {
		n.rpc(&Message{Type: MsgRestamp, To: to, Objects: objs, Version: version}, func(resp *Message) {
			if !n.buildCurrent(j) {
				return
			}
			if n.epoch != epoch {
				delete(n.jobs.builds, j.vid) // the next scan starts it again
				return
			}
			if resp.Code != OK {
				n.after(int64(max(n.t.RetryTicks/4, 1)), func() {
					if !n.buildCurrent(j) {
						return
					}
					if n.epoch != epoch {
						delete(n.jobs.builds, j.vid) // the next scan starts it again
						return
					}
					ask(to)
				})
				return
			}
			if j.left--; j.left == 0 {
				then()
			}
		})
	}
	for _, m := range n.cs.Nodes {
		ask(m.ID)
	}
}

// restampList is what a build re-stamping with version asks members to
// re-stamp: every object at its newest version, and where that is version
// already (an earlier build of this epoch re-stamped some copies) also at
// each older version one of its replicas holds.
func restampList(objs, held []ObjVersion, version uint64) []ObjVersion {
	out := slices.Clone(objs)
	for _, h := range held {
		i, found := slices.BinarySearchFunc(objs, h.OID, func(o ObjVersion, oid OID) int { return cmpU64(uint64(o.OID), uint64(oid)) })
		if found && objs[i].Version == version && h.Version < version {
			out = append(out, h)
		}
	}
	return distinctVersions(out)
}

// handleRestamp gives the listed objects held here at exactly their
// listed version the new version m.Version, durably.
func (n *Node) handleRestamp(m *Message) {
	if !n.epochGate(m, MsgRestampResp) {
		return
	}
	left, wrote := 1, false
	failed := OK
	finish := func(c Code) {
		if c != OK {
			failed = c
		}
		if left--; left > 0 {
			return
		}
		if failed != OK || !wrote {
			n.respond(m, MsgRestampResp, failed)
			return
		}
		// One sync for all of them: a re-stamp per object, each durable on
		// its own, made a first snapshot of 1 GiB written take 200 ms.
		n.disk(DiskOp{Kind: DiskSync}, func(d DiskDone) { n.respond(m, MsgRestampResp, d.Err) })
	}
	for _, ov := range m.Objects {
		o := n.objs[ov.OID]
		if o == nil || !o.present || o.meta.Version != ov.Version {
			continue
		}
		left++
		oid := ov.OID
		n.whenSettled(oid, func() {
			o := n.objs[oid]
			if o == nil || !o.present || o.meta.Version != ov.Version {
				finish(OK)
				return
			}
			meta := o.meta
			meta.Version = m.Version
			wrote = true
			op := DiskOp{Kind: DiskWrite, OID: oid, Meta: meta} // no data: the metadata only
			if meta.Deleted {
				op = DiskOp{Kind: DiskPut, OID: oid, Meta: meta}
			}
			n.writeLocal(op, finish)
		})
	}
	finish(OK)
}

// buildCurrent reports whether j is still the job for a VDI still being built.
func (n *Node) buildCurrent(j *buildJob) bool {
	v := n.cs.VDI(j.vid)
	if n.jobs.builds[j.vid] != j || v == nil || v.Deleted || !v.Building {
		if n.jobs.builds[j.vid] == j {
			delete(n.jobs.builds, j.vid)
		}
		return false
	}
	return true
}

func (n *Node) buildRead(j *buildJob, chunks []uint32) {
	j.phase = buildReading
	p := n.cs.VDI(j.parent)
	if p == nil || !p.Table || len(chunks) == 0 {
		n.buildWrite(j)
		return
	}
	j.left = len(chunks)
	for _, k := range chunks {
		n.buildReadChunk(j, k)
	}
}

func (n *Node) buildReadChunk(j *buildJob, k uint32) {
	n.gw.internal(n, &subOp{oid: TableOID(j.parent, k), op: OpRead, len: TableChunkSize}, func(code Code, data []byte) {
		if !n.buildCurrent(j) {
			return
		}
		if code != OK {
			n.after(int64(n.t.RetryTicks), func() {
				if n.buildCurrent(j) {
					n.buildReadChunk(j, k)
				}
			})
			return
		}
		j.ptab[k] = decodeChunk(data)
		if j.left--; j.left == 0 {
			n.buildWrite(j)
		}
	})
}

// buildWindow bounds the table objects a build writes at once.
const buildWindow = 16

func (n *Node) buildWrite(j *buildJob) {
	j.phase = buildWriting
	v := n.cs.VDI(j.vid)
	objs := v.Objects()
	for k := uint32(0); k < tableChunks(objs); k++ {
		if n.buildChunk(j, k, objs) != nil {
			j.writes = append(j.writes, k)
		}
	}
	j.left = len(j.writes)
	if j.left == 0 {
		n.buildCommit(j)
		return
	}
	for range min(buildWindow, len(j.writes)) {
		n.buildNextWrite(j)
	}
}

// buildChunk computes table object k of the new VDI, or nil if all its
// entries are 0 (a missing table object reads as zeros).
func (n *Node) buildChunk(j *buildJob, k, objs uint32) []uint32 {
	var out []uint32
	pt := j.ptab[k]
	for e := uint32(0); e < TableEntries && k*TableEntries+e < objs; e++ {
		idx := k*TableEntries + e
		var owner uint32
		if pt != nil {
			owner = pt[e]
		}
		if owner == 0 && j.own[idx] {
			owner = j.parent
		}
		if owner != 0 {
			if out == nil {
				out = make([]uint32, TableEntries)
			}
			out[e] = owner
		}
	}
	return out
}

func (n *Node) buildNextWrite(j *buildJob) {
	if len(j.writes) == 0 {
		return
	}
	k := j.writes[0]
	j.writes = j.writes[1:]
	n.buildWriteChunk(j, k)
}

// buildWriteChunk writes table object k. Its write id depends only on
// the generation and k, so a second builder (a new leader) writing the
// same bytes finds its write a retry of the first one's.
func (n *Node) buildWriteChunk(j *buildJob, k uint32) {
	v := n.cs.VDI(j.vid)
	data := encodeChunk(n.buildChunk(j, k, v.Objects()))
	w := &subOp{oid: TableOID(j.vid, k), op: OpWrite, len: TableChunkSize, data: data, flags: FlagFUA,
		reqID: j.gen<<writeSeqBits | uint64(k+1)}
	n.gw.internal(n, w, func(code Code, _ []byte) {
		if !n.buildCurrent(j) {
			return
		}
		if code != OK {
			n.after(int64(n.t.RetryTicks), func() {
				if n.buildCurrent(j) {
					n.buildWriteChunk(j, k)
				}
			})
			return
		}
		if j.left--; j.left == 0 {
			n.buildCommit(j)
			return
		}
		n.buildNextWrite(j)
	})
}

func (n *Node) buildCommit(j *buildJob) {
	j.phase = buildCommitting
	n.propose(&Cmd{Type: CmdBuilt, VID: j.vid, Gen: j.seal}, func(res Result) {
		if n.jobs.builds[j.vid] == j {
			delete(n.jobs.builds, j.vid)
		}
		if res.Code == OK {
			n.dropOrphans(j)
		}
	})
}

// orphans are the parent's own objects its table does not point to: the
// copies of copy-on-writes whose entry was never written (the attacher
// failed, or a snapshot moved the write on). Nothing can link them once
// the parent is sealed, and nothing reads them.
func (j *buildJob) orphans() []OID {
	var out []OID
	for _, idx := range sortedU32Keys(j.own) {
		if pt := j.ptab[idx/TableEntries]; pt != nil && pt[idx%TableEntries] != 0 {
			out = append(out, DataOID(j.parent, idx))
		}
	}
	return out
}

// dropOrphans deletes a sealed snapshot's orphans on every member; one
// that stays behind (a lost message) goes with the snapshot.
func (n *Node) dropOrphans(j *buildJob) {
	p := n.cs.VDI(j.parent)
	if p == nil || !p.IsSnapshot() || p.SealVersion == 0 {
		return
	}
	garbage := j.orphans()
	if len(garbage) == 0 {
		return
	}
	for _, m := range n.cs.Nodes {
		n.rpc(&Message{Type: MsgReclaim, To: m.ID, OIDs: garbage, Flags: FlagOrphans}, func(*Message) {})
	}
}
