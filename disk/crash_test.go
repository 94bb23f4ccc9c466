package disk

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
)

// TestCrashRecovery is a property test: run a random sequence of mutations
// and syncs, abandon the store without checkpointing, damage what a power
// failure could damage, reopen, and require the state after exactly the
// journal prefix that survived, which always includes every write done
// before the last Sync.
//
// Damage model: the journal loses or garbles anything after its last fsync
// (truncation, a flipped byte, garbage appended); the object files lose any
// subset, at 4 KiB page granularity, of what was written to them since it
// was last synced (each page and each file size independently reverts to
// the file's content at its last sync, each file creation or removal to the
// directory's state at its last sync). A durableModel follows the syncs.
//
// Sidecars are written only by checkpoints, so the rounds provoke them:
// some rounds use a tiny JournalLimit so the journal rotates and is
// checkpointed in the background, and abandon one checkpoint (and all
// later ones) at a random step, before a sidecar write, before the syncs,
// before the directory sync or before the journal removal, as a crash there
// would; any round may write the sidecars without syncing them (the first
// step of a checkpoint). The object files are then damaged from every kind
// of intermediate state: data newer than its sidecar, sidecar newer than
// its data, a sidecar partly written, synced or not, with its journal still
// present. Some reopenings are themselves interrupted the same way during
// recovery's checkpoint before the final reopening.
func TestCrashRecovery(t *testing.T) {
	seeds := 45
	if testing.Short() {
		seeds = 9
	}
	recycledRounds.Store(0)
	for seed := range seeds {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { crashRound(t, uint64(seed)) })
	}
	if recycledRounds.Load() == 0 {
		t.Fatal("no round crashed with a recycled journal file")
	}
}

// recycledRounds counts the rounds whose journal file at the crash was a
// recycled one (its bytes past the end are records of its former life).
var recycledRounds atomic.Int64

func crashRound(t *testing.T, seed uint64) {
	r := rand.New(rand.NewPCG(seed, 99))
	dir := t.TempDir()
	opt := quietOpts()
	// Commit only when the test says so.
	opt.FlushInterval = -1
	opt.FlushBytes = 1 << 40
	opt.MaxPending = 1 << 40
	opt.JournalLimit = 1 << 40
	rotate := seed%3 != 0
	if rotate {
		opt.JournalLimit = 16 << 10
	}
	opt.JournalBuffer = []int64{-1, 8 << 10, 64 << 10, 0}[seed%4]
	oids := []uint64{1, 2, 3, 0xfedcba9876543210}
	var ver uint64

	// Checkpointed starting state.
	m := model{}
	s := openT(t, dir, opt)
	for _, oid := range oids[:2] {
		ver++
		data := pattern(seed<<8|oid, 5*ChunkSize+123)
		must(t, s.Put(oid, ObjectMeta{Version: ver}, data, false))
		m.put(oid, ObjectMeta{Version: ver}, data)
	}
	closeT(t, s)
	dm := newDurableModel(t, filepath.Join(dir, "obj"))
	if rotate && r.IntN(4) != 0 {
		dm.stopAt = 1 + r.Int64N(20) // may lie beyond the last step
	}
	sopt := opt
	sopt.hooks = dm.hooks()
	// Journal files are recycled: what a file held before is what a
	// write to it that was lost leaves there.
	var pmu sync.Mutex
	preimages := make(map[string][]byte) // journal file name: its content when recycled
	sopt.hooks.recycled = func(spare, path string) {
		b, err := os.ReadFile(spare)
		if err != nil {
			t.Errorf("reading a recycled journal file: %v", err)
			return
		}
		pmu.Lock()
		preimages[filepath.Base(path)] = b
		pmu.Unlock()
	}
	s = openT(t, dir, sopt)
	dm.armed.Store(true)
	lsn0 := s.lastLSN // record i of this session has LSN lsn0+i

	models := []model{m} // models[k]: state after k journaled records
	sizes := []int64{0}  // sizes[k]: size of record k
	synced := 0          // records covered by the last Sync
	nops := 20 + r.IntN(40)
	for range nops {
		oid := oids[r.IntN(len(oids))]
		ver++
		meta := ObjectMeta{Version: ver, ReqID: r.Uint64()}
		mm := models[len(models)-1].clone()
		sync := r.IntN(8) == 0
		payload := 0
		var err error
		switch x := r.IntN(20); {
		case x < 11:
			off := int64(r.IntN(10 * ChunkSize))
			n := r.IntN(3 * ChunkSize)
			if r.IntN(3) == 0 {
				off &^= ChunkSize - 1
				n = ChunkSize * (1 + r.IntN(2))
			}
			data := pattern(r.Uint64(), n)
			if r.IntN(6) == 0 {
				clear(data)
			}
			err = s.Write(oid, meta, off, data, sync)
			mm.write(oid, meta, off, data)
			payload = n
		case x < 14:
			data := pattern(r.Uint64(), r.IntN(12*ChunkSize))
			for c := 0; c < len(data); c += ChunkSize {
				if r.IntN(3) == 0 {
					clear(data[c:min(c+ChunkSize, len(data))])
				}
			}
			err = s.Put(oid, meta, data, sync)
			mm.put(oid, meta, data)
			payload = len(data)
		case x < 16:
			meta.Deleted = true
			if x == 14 {
				err = s.Write(oid, meta, 7, []byte("ignored"), sync)
			} else {
				err = s.Put(oid, meta, []byte("ignored"), sync)
			}
			mm.write(oid, meta, 0, nil)
		case x < 18:
			sync = false // Delete is durable at the next commit
			err = s.Delete(oid)
			if !mm.del(oid) {
				if !errors.Is(err, ErrNotFound) {
					t.Fatalf("Delete(missing %x) = %v", oid, err)
				}
				continue // nothing journaled
			}
		case x < 19:
			must(t, s.Sync())
			synced = len(models) - 1
			continue
		default:
			// Also get operations applied to the object files, and
			// maybe the sidecars written (not synced).
			must(t, s.quiesce())
			synced = len(models) - 1
			if r.IntN(2) == 0 {
				flushSidecars(t, s)
			}
			continue
		}
		must(t, err)
		models = append(models, mm)
		sizes = append(sizes, recHdrSize+int64(payload))
		if sync {
			synced = len(models) - 1
		}
	}
	info := s.crash()
	// Records before the current journal file are in sealed (fsynced)
	// files or checkpointed. ends[j]: offset in the current file after the
	// first k0+j records.
	k0 := int(info.base - lsn0 - 1)
	ends := []int64{journalHdr2Size}
	for _, sz := range sizes[k0+1:] {
		ends = append(ends, ends[len(ends)-1]+sz)
	}
	// Records still in the journal buffer die with the process.
	written := k0 + survivors(ends, info.end)
	if ends[written-k0] != info.end || info.durable != ends[max(synced-k0, 0)] || info.end < info.durable {
		t.Fatalf("journal written %d durable %d; want a record boundary >= %d", info.end, info.durable, ends[max(synced-k0, 0)])
	}
	if opt.JournalBuffer < 0 && written != len(models)-1 {
		t.Fatalf("write-through journal lost records: %d of %d written", written, len(models)-1)
	}
	if rotate && k0 == 0 {
		t.Logf("journal never rotated")
	}
	durable := dm.snapshot()
	pmu.Lock()
	pre, recycled := preimages[filepath.Base(info.journal)]
	pmu.Unlock()
	if recycled {
		recycledRounds.Add(1)
	}
	if testing.Verbose() {
		t.Logf("rotate %v: checkpoint steps %d (abandoned: %v), durable files %d",
			rotate, dm.steps.Load(), dm.stopAt > 0 && dm.steps.Load() >= dm.stopAt, len(durable))
	}

	for _, damage := range []string{"none", "truncate", "truncate", "flip", "garbage", "revert", "revert-page", "header"} {
		vdir := t.TempDir()
		copyTree(t, dir, vdir)
		jpath := filepath.Join(vdir, "journal", filepath.Base(info.journal))
		k := written
		switch damage {
		case "truncate":
			c := info.durable + r.Int64N(info.end-info.durable+1)
			must(t, os.Truncate(jpath, c))
			k = k0 + survivors(ends, c)
		case "flip":
			if info.end > info.durable {
				c := info.durable + r.Int64N(info.end-info.durable)
				flipByte(t, jpath, c)
				k = k0 + survivors(ends, c)
			}
		case "garbage":
			f, err := os.OpenFile(jpath, os.O_WRONLY|os.O_APPEND, 0)
			must(t, err)
			_, err = f.Write(pattern(r.Uint64(), 1+r.IntN(300)))
			must(t, err)
			must(t, f.Close())
		case "revert", "revert-page":
			// The unsynced writes from c on (or those of one page) never
			// reached the disk: the recycled file's old bytes are there
			// (zeros, or a shorter file, where it had none).
			if !recycled || info.end == info.durable {
				continue
			}
			b, err := os.ReadFile(jpath)
			must(t, err)
			c := info.durable + r.Int64N(info.end-info.durable)
			to := int64(len(b))
			if damage == "revert-page" {
				to = min((c/ChunkSize+1)*ChunkSize, info.end)
			}
			first := info.end // the first byte the revert changes
			for i := c; i < to; i++ {
				v := byte(0)
				if i < int64(len(pre)) {
					v = pre[i]
				}
				if v != b[i] && first == info.end {
					first = i
				}
				b[i] = v
			}
			if damage == "revert" && int64(len(pre)) < int64(len(b)) {
				b = b[:max(c, int64(len(pre)))]
				first = min(first, int64(len(b)))
			}
			must(t, os.WriteFile(jpath, b, 0o644))
			// Where the old bytes equal the new ones (zeros in both,
			// say) nothing was lost: the damage starts at the first
			// byte that differs.
			k = k0 + survivors(ends, first)
		case "header":
			// Rotated to and never committed since: the header that
			// names the file's first record may not have reached the
			// disk, and the file then holds nothing durable.
			if k0 == 0 || info.durable != journalHdr2Size {
				continue
			}
			b, err := os.ReadFile(jpath)
			must(t, err)
			le := binary.LittleEndian
			copy(b, journalHeader2(le.Uint64(b[8:]), 0, le.Uint64(b[24:])))
			must(t, os.WriteFile(jpath, b, 0o644))
			k = k0
		}
		if k < synced {
			t.Fatalf("test bug: damage %s cut into the synced prefix", damage)
		}
		vobj := filepath.Join(vdir, "obj")
		mixObjects(t, r, vobj, durable)
		if r.IntN(2) == 0 {
			// Crash while recovering: abandon recovery's checkpoint
			// at a random step (or after it), then lose what was not
			// synced.
			rm := newDurableModel(t, vobj)
			rm.armed.Store(true)
			rm.stopAt = 1 + r.Int64N(10)
			ropt := opt
			ropt.hooks = rm.hooks()
			s, err := Open(vdir, ropt)
			if err == nil {
				s.crash()
			} else if !errors.Is(err, errCrashed) {
				t.Fatalf("interrupted recovery: %v", err)
			} else if testing.Verbose() {
				t.Logf("damage %s: recovery abandoned: %v", damage, err)
			}
			mixObjects(t, r, vobj, rm.snapshot())
		}
		s := openT(t, vdir, opt)
		func() {
			defer func() {
				if t.Failed() {
					t.Logf("damage %s: expected state after %d of %d records (synced %d)", damage, k, len(models)-1, synced)
				}
			}()
			checkModel(t, s, models[k])
		}()
		// Recovery is itself crash safe and idempotent.
		s.crash()
		s = openT(t, vdir, opt)
		checkModel(t, s, models[k])
		closeT(t, s)
	}
}

// survivors is the number of records that end at or before offset c.
func survivors(ends []int64, c int64) int {
	k := 0
	for k+1 < len(ends) && ends[k+1] <= c {
		k++
	}
	return k
}

func flipByte(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	must(t, err)
	defer f.Close()
	var b [1]byte
	_, err = f.ReadAt(b[:], off)
	must(t, err)
	b[0] ^= 0x10
	_, err = f.WriteAt(b[:], off)
	must(t, err)
}

func readTree(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	out := make(map[string][]byte)
	ents, err := os.ReadDir(dir)
	must(t, err)
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		must(t, err)
		out[e.Name()] = b
	}
	return out
}

func copyTree(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), b, 0o644)
	})
	must(t, err)
}

// mixObjects rewrites the object directory as a power failure might have
// left it: every change since the durable state snap independently survives
// or not, per 4 KiB page, per file size, per file creation and removal.
func mixObjects(t *testing.T, r *rand.Rand, dir string, snap map[string][]byte) {
	t.Helper()
	cur := readTree(t, dir)
	names := make(map[string]bool)
	for n := range cur {
		names[n] = true
	}
	for n := range snap {
		names[n] = true
	}
	for name := range names {
		path := filepath.Join(dir, name)
		now, inCur := cur[name]
		old, inOld := snap[name]
		var out []byte
		switch {
		case inCur && inOld:
			size := len(now)
			if r.IntN(2) == 0 {
				size = len(old)
			}
			out = make([]byte, size)
			for p := 0; p < size; p += ChunkSize {
				src := now
				if r.IntN(2) == 0 {
					src = old
				}
				if p < len(src) {
					copy(out[p:min(p+ChunkSize, size)], src[p:])
				}
			}
		case inCur:
			switch r.IntN(3) {
			case 0:
				must(t, os.Remove(path))
				continue
			case 1:
				out = now
			default:
				out = append([]byte{}, now...)
				for p := 0; p < len(out); p += ChunkSize {
					if r.IntN(2) == 0 {
						clear(out[p:min(p+ChunkSize, len(out))])
					}
				}
			}
		default: // removed since the checkpoint
			if r.IntN(2) == 0 {
				continue
			}
			out = old
		}
		must(t, os.WriteFile(path, out, 0o644))
	}
}

// flushSidecars writes every sidecar that is behind, as the first step of a
// checkpoint does, without syncing anything or removing a journal.
func flushSidecars(t *testing.T, s *Store) {
	t.Helper()
	var oids []uint64
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.RLock()
		for oid := range sh.m {
			oids = append(oids, oid)
		}
		sh.mu.RUnlock()
	}
	for _, oid := range oids {
		must(t, s.flushSidecar(oid))
	}
}

// durableModel follows, through the store's test hooks, what of obj/ would
// survive a power failure: each file's content at its last sync, and the
// directory entries at the last sync of the directory. Files are told apart
// by identity (fileID), not name: a name that was removed and created again
// since the directory's last sync still refers to the old file, and one
// that the directory sync found recreated starts out with nothing synced.
// It can also abandon a checkpoint at its stopAt-th step.
type durableModel struct {
	t      *testing.T
	dir    string
	armed  atomic.Bool // set once the store under test is open
	stopAt int64       // abandon at this step (0: never); set before arming
	steps  atomic.Int64

	mu      sync.Mutex
	files   map[string]fileState // each name's file at its last sync
	durable map[string]fileState // durable entries and their durable content
}

type fileState struct {
	id   string
	data []byte
}

// newDurableModel starts from dir's current content, taken as durable.
func newDurableModel(t *testing.T, dir string) *durableModel {
	t.Helper()
	d := &durableModel{t: t, dir: dir, files: make(map[string]fileState), durable: make(map[string]fileState)}
	ents, err := os.ReadDir(dir)
	must(t, err)
	for _, e := range ents {
		st, err := readState(filepath.Join(dir, e.Name()), true)
		must(t, err)
		d.durable[e.Name()] = st
	}
	return d
}

// readState reads the identity and, with data, the content of a file.
func readState(path string, data bool) (fileState, error) {
	f, err := os.Open(path)
	if err != nil {
		return fileState{}, err
	}
	defer f.Close()
	id, err := fileID(f)
	if err != nil || !data {
		return fileState{id: id}, err
	}
	b, err := io.ReadAll(f)
	return fileState{id: id, data: b}, err
}

func (d *durableModel) hooks() *testHooks {
	return &testHooks{synced: d.synced, step: d.step}
}

func (d *durableModel) step() error {
	if !d.armed.Load() {
		return nil
	}
	if n := d.steps.Add(1); d.stopAt > 0 && n >= d.stopAt {
		return fmt.Errorf("abandoned at checkpoint step %d", n)
	}
	return nil
}

func (d *durableModel) synced(path string) {
	if !d.armed.Load() {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if path == d.dir {
		ents, err := os.ReadDir(d.dir)
		if err != nil {
			d.t.Errorf("durable model: %v", err)
			return
		}
		nd := make(map[string]fileState)
		for _, e := range ents {
			name := e.Name()
			st, err := readState(filepath.Join(d.dir, name), false)
			if errors.Is(err, fs.ErrNotExist) {
				continue // removed since the sync: not durable either way
			}
			if err != nil {
				d.t.Errorf("durable model: %v", err)
				return
			}
			if old, ok := d.durable[name]; ok && old.id == st.id {
				nd[name] = old
			} else if f, ok := d.files[name]; ok && f.id == st.id {
				nd[name] = f
			} else {
				nd[name] = fileState{id: st.id, data: []byte{}} // content never synced
			}
		}
		d.durable = nd
		return
	}
	st, err := readState(path, true)
	if errors.Is(err, fs.ErrNotExist) {
		return
	}
	if err != nil {
		d.t.Errorf("durable model: %v", err)
		return
	}
	name := filepath.Base(path)
	d.files[name] = st
	if old, ok := d.durable[name]; ok && old.id == st.id {
		d.durable[name] = st
	}
}

// snapshot returns the durable content of each durable entry.
func (d *durableModel) snapshot() map[string][]byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make(map[string][]byte, len(d.durable))
	for name, st := range d.durable {
		out[name] = st.data
	}
	return out
}
