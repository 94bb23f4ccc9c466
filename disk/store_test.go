package disk

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func quietOpts() Options {
	return Options{Logger: slog.New(slog.DiscardHandler)}
}

func openT(t testing.TB, dir string, opt Options) *Store {
	t.Helper()
	s, err := Open(dir, opt)
	if err != nil {
		t.Fatalf("Open(%s): %v", dir, err)
	}
	return s
}

func closeT(t testing.TB, s *Store) {
	t.Helper()
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

// objDump is an object's observable state.
type objDump struct {
	Meta ObjectMeta
	Size int64
	Data []byte
}

// dump reads every object in full.
func dump(t testing.TB, s *Store) map[uint64]objDump {
	t.Helper()
	out := make(map[uint64]objDump)
	for _, info := range s.List() {
		buf := make([]byte, info.Size)
		meta, err := s.Read(info.OID, 0, buf)
		if err != nil {
			t.Fatalf("Read(%016x): %v", info.OID, err)
		}
		if meta != info.Meta {
			t.Fatalf("Read(%016x) meta %+v, List says %+v", info.OID, meta, info.Meta)
		}
		out[info.OID] = objDump{Meta: info.Meta, Size: info.Size, Data: buf}
	}
	return out
}

// model is the reference semantics of the object store.
type model map[uint64]objDump

func (m model) clone() model {
	c := make(model, len(m))
	for k, v := range m {
		v.Data = bytes.Clone(v.Data)
		c[k] = v
	}
	return c
}

func (m model) write(oid uint64, meta ObjectMeta, off int64, p []byte) {
	o, ok := m[oid]
	if meta.Deleted {
		m[oid] = objDump{Meta: meta, Data: []byte{}}
		return
	}
	if !ok || o.Meta.Deleted {
		o = objDump{Data: []byte{}}
	}
	if len(p) > 0 && off+int64(len(p)) > int64(len(o.Data)) {
		o.Data = append(o.Data, make([]byte, off+int64(len(p))-int64(len(o.Data)))...)
	}
	if len(p) > 0 {
		copy(o.Data[off:], p)
	}
	o.Meta, o.Size = meta, int64(len(o.Data))
	m[oid] = o
}

func (m model) put(oid uint64, meta ObjectMeta, data []byte) {
	if meta.Deleted {
		m[oid] = objDump{Meta: meta, Data: []byte{}}
		return
	}
	m[oid] = objDump{Meta: meta, Size: int64(len(data)), Data: bytes.Clone(data)}
}

func (m model) del(oid uint64) bool {
	_, ok := m[oid]
	delete(m, oid)
	return ok
}

func checkModel(t testing.TB, s *Store, want model) {
	t.Helper()
	got := dump(t, s)
	if diff := cmp.Diff(map[uint64]objDump(want), got, cmp.Comparer(func(a, b []byte) bool { return bytes.Equal(a, b) })); diff != "" {
		t.Fatalf("store state mismatch (-want +got):\n%s", diff)
	}
}

func pattern(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 0x5eed))
	b := make([]byte, (n+7)&^7)
	for i := 0; i < len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
	}
	return b[:n]
}

func TestReadWriteSemantics(t *testing.T) {
	type step struct {
		op      string // write, put, delete, tomb
		oid     uint64
		ver     uint64
		off     int64
		data    []byte
		wantErr error
	}
	a := pattern(1, 3*ChunkSize+100)
	b := pattern(2, 50)
	c := pattern(3, 2*ChunkSize)
	tests := []struct {
		name  string
		steps []step
	}{
		{"single write at 0", []step{{op: "write", oid: 1, ver: 1, data: a}}},
		{"unaligned write into hole", []step{{op: "write", oid: 1, ver: 1, off: 10000, data: b}}},
		{"overwrite middle of chunk", []step{
			{op: "write", oid: 1, ver: 1, data: a},
			{op: "write", oid: 1, ver: 2, off: ChunkSize + 7, data: b},
		}},
		{"write spanning chunks unaligned", []step{
			{op: "write", oid: 1, ver: 1, data: a},
			{op: "write", oid: 1, ver: 2, off: ChunkSize - 3, data: c},
		}},
		{"empty write creates object and sets meta", []step{
			{op: "write", oid: 7, ver: 5},
		}},
		{"empty write keeps data", []step{
			{op: "write", oid: 7, ver: 5, data: b},
			{op: "write", oid: 7, ver: 6, off: 1 << 20},
		}},
		{"put replaces and shrinks", []step{
			{op: "write", oid: 1, ver: 1, data: a},
			{op: "put", oid: 1, ver: 2, data: b},
		}},
		{"put with zero chunks", []step{
			{op: "put", oid: 1, ver: 1, data: append(append(bytes.Clone(c), make([]byte, 3*ChunkSize)...), b...)},
		}},
		{"put empty", []step{
			{op: "write", oid: 1, ver: 1, data: a},
			{op: "put", oid: 1, ver: 2},
		}},
		{"tombstone then revive", []step{
			{op: "write", oid: 1, ver: 1, data: a},
			{op: "tomb", oid: 1, ver: 2},
			{op: "write", oid: 1, ver: 3, off: 5, data: b},
		}},
		{"delete", []step{
			{op: "write", oid: 1, ver: 1, data: a},
			{op: "write", oid: 2, ver: 1, data: b},
			{op: "delete", oid: 1},
		}},
		{"delete missing", []step{
			{op: "delete", oid: 9, wantErr: ErrNotFound},
		}},
		{"delete then recreate", []step{
			{op: "write", oid: 1, ver: 1, data: a},
			{op: "delete", oid: 1},
			{op: "write", oid: 1, ver: 1, off: 3, data: b},
		}},
		{"write beyond max size", []step{
			{op: "write", oid: 1, ver: 1, off: DefaultMaxObjectSize - 10, data: b, wantErr: ErrInvalid},
		}},
		{"negative offset", []step{
			{op: "write", oid: 1, ver: 1, off: -1, data: b, wantErr: ErrInvalid},
		}},
		{"large oid", []step{
			{op: "write", oid: 0xfedcba9876543210, ver: 1, data: b},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// Check both before the operations are applied (pending in
			// memory) and after (files), and after a reopen.
			for _, mode := range []string{"pending", "applied"} {
				t.Run(mode, func(t *testing.T) {
					opt := quietOpts()
					opt.FlushInterval = -1
					dir := t.TempDir()
					s := openT(t, dir, opt)
					m := model{}
					for i, st := range tc.steps {
						meta := ObjectMeta{Version: st.ver, ReqID: uint64(100 + i)}
						var err error
						switch st.op {
						case "write":
							err = s.Write(st.oid, meta, st.off, st.data, false)
							if err == nil {
								m.write(st.oid, meta, st.off, st.data)
							}
						case "put":
							err = s.Put(st.oid, meta, st.data, false)
							if err == nil {
								m.put(st.oid, meta, st.data)
							}
						case "tomb":
							meta.Deleted = true
							err = s.Write(st.oid, meta, 0, nil, false)
							if err == nil {
								m.write(st.oid, meta, 0, nil)
							}
						case "delete":
							err = s.Delete(st.oid)
							if err == nil {
								m.del(st.oid)
							}
						}
						if !errors.Is(err, st.wantErr) || (err != nil) != (st.wantErr != nil) {
							t.Fatalf("step %d (%s): err %v, want %v", i, st.op, err, st.wantErr)
						}
						if mode == "applied" {
							if err := s.quiesce(); err != nil {
								t.Fatal(err)
							}
						}
					}
					checkModel(t, s, m)
					checkReads(t, s, m)
					closeT(t, s)
					s = openT(t, dir, opt)
					checkModel(t, s, m)
					closeT(t, s)
				})
			}
		})
	}
}

// checkReads reads every object at assorted offsets and lengths, including
// past its end, and a missing object.
func checkReads(t *testing.T, s *Store, m model) {
	t.Helper()
	for oid, o := range m {
		for _, r := range []struct{ off, n int64 }{
			{0, 1}, {1, 4095}, {4095, 2}, {ChunkSize, ChunkSize}, {100, 3 * ChunkSize},
			{o.Size - 1, 10}, {o.Size, 100}, {o.Size + 5*ChunkSize, ChunkSize},
		} {
			if r.off < 0 {
				continue
			}
			p := bytes.Repeat([]byte{0xaa}, int(r.n))
			meta, err := s.Read(oid, r.off, p)
			if err != nil {
				t.Fatalf("Read(%x, %d, %d): %v", oid, r.off, r.n, err)
			}
			want := make([]byte, r.n)
			if r.off < int64(len(o.Data)) {
				copy(want, o.Data[r.off:])
			}
			if !bytes.Equal(p, want) {
				t.Fatalf("Read(%x, %d, %d) content mismatch", oid, r.off, r.n)
			}
			if meta != o.Meta {
				t.Fatalf("Read(%x) meta %+v want %+v", oid, meta, o.Meta)
			}
		}
	}
	p := []byte{1, 2, 3}
	if _, err := s.Read(0xdead, 0, p); !errors.Is(err, ErrNotFound) || !bytes.Equal(p, []byte{0, 0, 0}) {
		t.Fatalf("Read(missing) = %v, p=%v; want ErrNotFound and zeroed p", err, p)
	}
	if _, ok := s.Stat(0xdead); ok {
		t.Fatal("Stat(missing) reports existence")
	}
}

func TestStatListUsage(t *testing.T) {
	s := openT(t, t.TempDir(), quietOpts())
	defer closeT(t, s)
	if got := s.List(); len(got) != 0 {
		t.Fatalf("List of empty store = %v", got)
	}
	must(t, s.Write(3, ObjectMeta{Version: 1, ReqID: 7}, 100, make([]byte, 10), false))
	must(t, s.Put(1, ObjectMeta{Version: 2}, pattern(1, 5000), false))
	must(t, s.Write(2, ObjectMeta{Version: 3, Deleted: true}, 0, nil, false))
	want := []ObjectInfo{
		{OID: 1, Meta: ObjectMeta{Version: 2}, Size: 5000},
		{OID: 2, Meta: ObjectMeta{Version: 3, Deleted: true}, Size: 0},
		{OID: 3, Meta: ObjectMeta{Version: 1, ReqID: 7}, Size: 110},
	}
	check := func() {
		t.Helper()
		if diff := cmp.Diff(want, s.List()); diff != "" {
			t.Fatalf("List (-want +got):\n%s", diff)
		}
		meta, ok := s.Stat(2)
		if !ok || !meta.Deleted || meta.Version != 3 {
			t.Fatalf("Stat(tombstone) = %+v, %v", meta, ok)
		}
		used, free, err := s.Usage()
		if err != nil || used != 5110 || free == 0 {
			t.Fatalf("Usage = %d, %d, %v; want 5110, >0, nil", used, free, err)
		}
	}
	check()
	must(t, s.quiesce())
	check()
}

func TestTombstoneReleasesData(t *testing.T) {
	dir := t.TempDir()
	s := openT(t, dir, quietOpts())
	data := pattern(5, 8*ChunkSize)
	must(t, s.Write(42, ObjectMeta{Version: 1}, 0, data, false))
	must(t, s.quiesce())
	must(t, s.Write(42, ObjectMeta{Version: 2, Deleted: true}, 0, nil, true))
	must(t, s.quiesce())
	p := bytes.Repeat([]byte{1}, 100)
	meta, err := s.Read(42, 0, p)
	if err != nil || meta != (ObjectMeta{Version: 2, Deleted: true}) || !isZero(p) {
		t.Fatalf("Read(tombstone) = %+v, %v, zero=%v", meta, err, isZero(p))
	}
	closeT(t, s)
	fi, err := os.Stat(filepath.Join(dir, "obj", "000000000000002a"))
	if err != nil || fi.Size() != 0 {
		t.Fatalf("tombstone data file: %v, %v; want size 0", fi, err)
	}
	fi, err = os.Stat(filepath.Join(dir, "obj", "000000000000002a.meta"))
	if err != nil || fi.Size() != metaHdrSize {
		t.Fatalf("tombstone sidecar: %v, %v; want header only", fi, err)
	}
	s = openT(t, dir, quietOpts())
	defer closeT(t, s)
	if meta, ok := s.Stat(42); !ok || meta != (ObjectMeta{Version: 2, Deleted: true}) {
		t.Fatalf("Stat after reopen = %+v, %v", meta, ok)
	}
}

func TestDeleteRemovesFiles(t *testing.T) {
	dir := t.TempDir()
	s := openT(t, dir, quietOpts())
	must(t, s.Write(5, ObjectMeta{Version: 1}, 0, []byte("hello"), false))
	must(t, s.quiesce())
	must(t, s.Delete(5))
	if _, ok := s.Stat(5); ok {
		t.Fatal("Stat after Delete reports existence")
	}
	must(t, s.quiesce())
	closeT(t, s)
	ents, err := os.ReadDir(filepath.Join(dir, "obj"))
	if err != nil || len(ents) != 0 {
		t.Fatalf("obj/ after delete: %v, %v", ents, err)
	}
	if n := journalFiles(t, dir); n != 0 {
		t.Fatalf("%d journal files after Close; want none", n)
	}
	ents, err = os.ReadDir(filepath.Join(dir, "journal"))
	if err != nil || len(ents) > maxSpares {
		t.Fatalf("journal/ after Close: %v, %v; want at most %d spare file(s)", ents, err, maxSpares)
	}
}

func TestClosed(t *testing.T) {
	s := openT(t, t.TempDir(), quietOpts())
	closeT(t, s)
	if err := s.Close(); !errors.Is(err, ErrClosed) {
		t.Fatalf("second Close = %v", err)
	}
	if err := s.Write(1, ObjectMeta{}, 0, nil, false); !errors.Is(err, ErrClosed) {
		t.Fatalf("Write after Close = %v", err)
	}
	if _, err := s.Read(1, 0, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("Read after Close = %v", err)
	}
	if err := s.Sync(); !errors.Is(err, ErrClosed) {
		t.Fatalf("Sync after Close = %v", err)
	}
	if _, err := s.GetMeta("x"); !errors.Is(err, ErrClosed) {
		t.Fatalf("GetMeta after Close = %v", err)
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestCorruption(t *testing.T) {
	dir := t.TempDir()
	s := openT(t, dir, quietOpts())
	a := pattern(10, 4*ChunkSize)
	b := pattern(11, 2*ChunkSize)
	must(t, s.Write(0xa, ObjectMeta{Version: 1}, 0, a, false))
	must(t, s.Write(0xb, ObjectMeta{Version: 1}, 0, b, false))
	closeT(t, s)

	flip := func(path string, off int64) {
		t.Helper()
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		must(t, err)
		defer f.Close()
		var c [1]byte
		_, err = f.ReadAt(c[:], off)
		must(t, err)
		c[0] ^= 0x40
		_, err = f.WriteAt(c[:], off)
		must(t, err)
	}
	objA := filepath.Join(dir, "obj", "000000000000000a")
	flip(objA, ChunkSize+123)                // data of chunk 1
	flip(objA+metaSuffix, metaHdrSize+4*3+1) // checksum of chunk 3

	s = openT(t, dir, quietOpts())
	defer closeT(t, s)
	tests := []struct {
		off, n  int64
		corrupt int64 // offset named in the error, -1 for none
	}{
		{0, ChunkSize, -1},
		{ChunkSize, ChunkSize, ChunkSize},
		{ChunkSize + 200, 10, ChunkSize},
		{0, 4 * ChunkSize, ChunkSize},
		{2 * ChunkSize, ChunkSize, -1},
		{3 * ChunkSize, 1, 3 * ChunkSize},
	}
	for _, tc := range tests {
		p := bytes.Repeat([]byte{0xff}, int(tc.n))
		_, err := s.Read(0xa, tc.off, p)
		if tc.corrupt < 0 {
			if err != nil || !bytes.Equal(p, a[tc.off:tc.off+tc.n]) {
				t.Fatalf("Read(a, %d, %d) = %v or wrong data", tc.off, tc.n, err)
			}
			continue
		}
		if !errors.Is(err, ErrCorrupt) {
			t.Fatalf("Read(a, %d, %d) = %v, want ErrCorrupt", tc.off, tc.n, err)
		}
		if msg := err.Error(); !strings.Contains(msg, "000000000000000a") || !strings.Contains(msg, fmt.Sprintf("offset %d", tc.corrupt)) {
			t.Fatalf("error %q does not name the object and offset %d", msg, tc.corrupt)
		}
		if !isZero(p) {
			t.Fatalf("Read(a, %d, %d) returned data with ErrCorrupt", tc.off, tc.n)
		}
	}
	p := make([]byte, len(b))
	if _, err := s.Read(0xb, 0, p); err != nil || !bytes.Equal(p, b) {
		t.Fatalf("Read(b) = %v", err)
	}

	// A partial write into the corrupt chunk must not bless it.
	must(t, s.Write(0xa, ObjectMeta{Version: 2}, ChunkSize+10, []byte("xyz"), false))
	must(t, s.quiesce())
	if _, err := s.Read(0xa, ChunkSize, make([]byte, 8)); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("after partial overwrite: %v, want ErrCorrupt", err)
	}
	// Overwriting the whole chunk heals it.
	must(t, s.Write(0xa, ObjectMeta{Version: 3}, ChunkSize, b[:ChunkSize], false))
	must(t, s.quiesce())
	p = make([]byte, ChunkSize)
	if _, err := s.Read(0xa, ChunkSize, p); err != nil || !bytes.Equal(p, b[:ChunkSize]) {
		t.Fatalf("after full overwrite: %v", err)
	}
}

func TestCorruptHeaderQuarantined(t *testing.T) {
	dir := t.TempDir()
	s := openT(t, dir, quietOpts())
	must(t, s.Write(1, ObjectMeta{Version: 1}, 0, []byte("one"), false))
	must(t, s.Write(2, ObjectMeta{Version: 1}, 0, []byte("two"), false))
	closeT(t, s)
	path := filepath.Join(dir, "obj", "0000000000000001.meta")
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	must(t, err)
	_, err = f.WriteAt([]byte{0xff}, 9) // version byte: header CRC fails
	must(t, err)
	must(t, f.Close())

	s = openT(t, dir, quietOpts())
	defer closeT(t, s)
	if _, ok := s.Stat(1); ok {
		t.Fatal("object with a corrupt header is still listed")
	}
	if _, err := os.Stat(path + ".corrupt"); err != nil {
		t.Fatalf("corrupt sidecar not set aside: %v", err)
	}
	p := make([]byte, 3)
	if _, err := s.Read(2, 0, p); err != nil || string(p) != "two" {
		t.Fatalf("Read(2) = %q, %v", p, err)
	}
}

// faultSwitch injects err at one fault point while armed.
type faultSwitch struct {
	mu    sync.Mutex
	point Fault
	err   error
	hits  atomic.Int64
}

func (f *faultSwitch) set(point Fault, err error) {
	f.mu.Lock()
	f.point, f.err = point, err
	f.mu.Unlock()
}

func (f *faultSwitch) hook(p Fault) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil && p == f.point {
		f.hits.Add(1)
		return f.err
	}
	return nil
}

func TestNoSpaceJournal(t *testing.T) {
	tests := []struct {
		name   string
		point  Fault
		errno  error
		buffer int64 // Options.JournalBuffer
		size   int   // payload of the failing writes
	}{
		{"write-through ENOSPC midway", FaultJournalWrite, syscall.ENOSPC, -1, 3000},
		{"write-through EDQUOT midway", FaultJournalWrite, syscall.EDQUOT, -1, 3000},
		{"large record ENOSPC midway", FaultJournalWrite, syscall.ENOSPC, 0, 300 << 10},
		{"reserve ENOSPC", FaultJournalAlloc, syscall.ENOSPC, 0, journalPrealloc + 1},
		{"reserve EDQUOT", FaultJournalAlloc, syscall.EDQUOT, 0, journalPrealloc + 1},
		{"write-through reserve ENOSPC", FaultJournalAlloc, syscall.ENOSPC, -1, journalPrealloc + 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			var fs faultSwitch
			opt := quietOpts()
			opt.Fault = fs.hook
			opt.FlushInterval = -1
			opt.JournalBuffer = tc.buffer
			s := openT(t, dir, opt)
			m := model{}
			a := pattern(1, 10000)
			must(t, s.Write(1, ObjectMeta{Version: 1}, 0, a, true))
			m.write(1, ObjectMeta{Version: 1}, 0, a)
			must(t, s.Write(2, ObjectMeta{Version: 1}, 0, a[:100], true))
			m.write(2, ObjectMeta{Version: 1}, 0, a[:100])
			s.jmu.Lock()
			written := s.jflushed
			s.jmu.Unlock()

			fs.set(tc.point, tc.errno)
			big := pattern(2, tc.size)
			for i, err := range []error{
				s.Write(1, ObjectMeta{Version: 2}, 5, big, false),
				s.Write(3, ObjectMeta{Version: 2}, 0, big, true),
				s.Put(2, ObjectMeta{Version: 2}, big, false),
			} {
				if !errors.Is(err, ErrNoSpace) || !errors.Is(err, tc.errno) {
					t.Fatalf("write %d: %v, want ErrNoSpace wrapping %v", i, err, tc.errno)
				}
			}
			if fs.hits.Load() == 0 {
				t.Fatal("fault hook never hit")
			}
			fi, err := os.Stat(s.jpath)
			must(t, err)
			if fi.Size() != written {
				t.Fatalf("journal size %d after failed appends, want %d (partial record left behind)", fi.Size(), written)
			}
			checkModel(t, s, m)
			if tc.point == FaultJournalAlloc {
				// Records without data use the reserve, so space can be
				// freed on a full filesystem.
				must(t, s.Delete(2))
				m.del(2)
			}
			must(t, s.Sync())

			fs.set(0, nil)
			must(t, s.Write(1, ObjectMeta{Version: 3}, 20, big, false))
			m.write(1, ObjectMeta{Version: 3}, 20, big)
			must(t, s.Sync())
			checkModel(t, s, m)
			s.crash()
			s = openT(t, dir, quietOpts())
			checkModel(t, s, m)
			closeT(t, s)
		})
	}
}

// TestJournalFlushFailure: a buffered journal write fails after its records
// were acknowledged. The store refuses further writes and syncs, keeps
// serving reads, and after reopening holds everything synced before.
func TestJournalFlushFailure(t *testing.T) {
	dir := t.TempDir()
	var fs faultSwitch
	opt := quietOpts()
	opt.Fault = fs.hook
	opt.FlushInterval = -1
	s := openT(t, dir, opt)
	must(t, s.Write(1, ObjectMeta{Version: 1}, 0, []byte("synced"), true))
	must(t, s.Write(1, ObjectMeta{Version: 2}, 0, []byte("buffer"), false))
	fs.set(FaultJournalWrite, syscall.EIO)
	if err := s.Sync(); !errors.Is(err, syscall.EIO) {
		t.Fatalf("Sync = %v, want EIO", err)
	}
	fs.set(0, nil)
	if err := s.Write(2, ObjectMeta{Version: 1}, 0, []byte("x"), false); !errors.Is(err, syscall.EIO) {
		t.Fatalf("Write after journal failure = %v, want EIO", err)
	}
	p := make([]byte, 6)
	if _, err := s.Read(1, 0, p); err != nil || string(p) != "buffer" {
		t.Fatalf("Read = %q, %v", p, err)
	}
	if err := s.Close(); err == nil {
		t.Fatal("Close after journal failure succeeded")
	}
	s = openT(t, dir, quietOpts())
	defer closeT(t, s)
	if meta, err := s.Read(1, 0, p); err != nil || string(p) != "synced" || meta.Version != 1 {
		t.Fatalf("after reopen: %q, %+v, %v", p, meta, err)
	}
}

// TestJournalFailureUnblocksWriters: a writer waiting for backpressure must
// not hang when the journal fails under it.
func TestJournalFailureUnblocksWriters(t *testing.T) {
	var fs faultSwitch
	opt := quietOpts()
	opt.Fault = fs.hook
	opt.FlushInterval = -1
	opt.MaxPending = 2 * ChunkSize
	s := openT(t, t.TempDir(), opt)
	fs.set(FaultJournalSync, syscall.EIO)
	var err error
	for i := range 4 {
		if err = s.Write(uint64(i), ObjectMeta{Version: 1}, 0, make([]byte, ChunkSize), false); err != nil {
			break
		}
	}
	if !errors.Is(err, syscall.EIO) {
		t.Fatalf("Write under backpressure with a failed journal = %v, want EIO", err)
	}
	if err := s.Close(); !errors.Is(err, syscall.EIO) {
		t.Fatalf("Close = %v, want EIO", err)
	}
}

func TestNoSpaceApply(t *testing.T) {
	dir := t.TempDir()
	var fs faultSwitch
	opt := quietOpts()
	opt.Fault = fs.hook
	opt.FlushInterval = -1
	s := openT(t, dir, opt)
	m := model{}
	must(t, s.Write(1, ObjectMeta{Version: 1}, 0, []byte("first"), false))
	m.write(1, ObjectMeta{Version: 1}, 0, []byte("first"))
	must(t, s.quiesce())

	fs.set(FaultApply, syscall.ENOSPC)
	// Journaled and durable, but cannot be applied.
	must(t, s.Write(1, ObjectMeta{Version: 2}, 2, []byte("cond"), true))
	m.write(1, ObjectMeta{Version: 2}, 2, []byte("cond"))
	if err := s.drainApplier(); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("applier error %v, want ErrNoSpace", err)
	}
	// New writes fail while the applier is stuck; reads see the durable write.
	if err := s.Write(2, ObjectMeta{Version: 1}, 0, []byte("x"), false); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("Write while stuck = %v, want ErrNoSpace", err)
	}
	checkModel(t, s, m)

	fs.set(0, nil)
	must(t, s.Write(2, ObjectMeta{Version: 1}, 0, []byte("x"), false))
	m.write(2, ObjectMeta{Version: 1}, 0, []byte("x"))
	must(t, s.quiesce())
	checkModel(t, s, m)
	closeT(t, s)
	s = openT(t, dir, quietOpts())
	defer closeT(t, s)
	checkModel(t, s, m)
}

func TestNoSpaceApplyAcrossCrash(t *testing.T) {
	dir := t.TempDir()
	var fs faultSwitch
	opt := quietOpts()
	opt.Fault = fs.hook
	s := openT(t, dir, opt)
	fs.set(FaultApply, syscall.ENOSPC)
	must(t, s.Write(1, ObjectMeta{Version: 1}, 0, []byte("durable"), true))
	if err := s.drainApplier(); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("applier error %v, want ErrNoSpace", err)
	}
	if err := s.Close(); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("Close with unapplied writes = %v, want ErrNoSpace", err)
	}
	s = openT(t, dir, quietOpts())
	defer closeT(t, s)
	p := make([]byte, 7)
	if _, err := s.Read(1, 0, p); err != nil || string(p) != "durable" {
		t.Fatalf("after reopen: %q, %v", p, err)
	}
}

func TestJournalRotation(t *testing.T) {
	for _, crash := range []bool{false, true} {
		t.Run(fmt.Sprintf("crash=%v", crash), func(t *testing.T) {
			dir := t.TempDir()
			opt := quietOpts()
			opt.JournalLimit = 64 << 10
			opt.FlushBytes = 16 << 10
			opt.MaxOpenFiles = 4
			s := openT(t, dir, opt)
			m := model{}
			r := rand.New(rand.NewPCG(7, 7))
			for i := range 400 {
				oid := uint64(r.IntN(12))
				meta := ObjectMeta{Version: uint64(i + 1)}
				switch r.IntN(10) {
				case 0:
					data := pattern(uint64(i), r.IntN(5*ChunkSize))
					must(t, s.Put(oid, meta, data, false))
					m.put(oid, meta, data)
				case 1:
					if err := s.Delete(oid); err == nil {
						m.del(oid)
					} else if !errors.Is(err, ErrNotFound) {
						t.Fatal(err)
					}
				default:
					off := int64(r.IntN(6 * ChunkSize))
					data := pattern(uint64(i), r.IntN(2*ChunkSize))
					must(t, s.Write(oid, meta, off, data, r.IntN(20) == 0))
					m.write(oid, meta, off, data)
				}
			}
			checkModel(t, s, m)
			if crash {
				// A crash loses the unsynced tail (records still in the
				// journal buffer); make everything durable first, so the
				// whole model must survive, without a checkpoint.
				must(t, s.Sync())
				s.crash()
			} else {
				closeT(t, s)
			}
			s = openT(t, dir, opt)
			checkModel(t, s, m)
			closeT(t, s)
		})
	}
}

func TestConcurrent(t *testing.T) {
	dir := t.TempDir()
	opt := quietOpts()
	opt.JournalLimit = 256 << 10
	opt.FlushBytes = 32 << 10
	opt.MaxPending = 128 << 10
	opt.MaxOpenFiles = 6
	s := openT(t, dir, opt)
	const (
		writers  = 6
		readers  = 4
		perW     = 3
		rounds   = 60
		objBytes = 3*ChunkSize + 500
	)
	content := func(oid, ver uint64) []byte { return pattern(oid<<20|ver, objBytes) }
	var wg, wgW sync.WaitGroup
	var stop atomic.Bool
	errc := make(chan error, writers+readers+2)
	for w := range writers {
		wgW.Add(1)
		go func() {
			defer wgW.Done()
			for v := uint64(1); v <= rounds; v++ {
				for i := range perW {
					oid := uint64(w*perW + i)
					meta := ObjectMeta{Version: v, ReqID: oid}
					var err error
					switch v % 4 {
					case 0:
						err = s.Put(oid, meta, content(oid, v), false)
					case 1:
						err = s.Write(oid, meta, 0, content(oid, v), v%8 == 1)
					case 2:
						// Tombstone and revive in one step each; a reader
						// sees zeros (tombstone) or the full content.
						err = s.Write(oid, ObjectMeta{Version: v, ReqID: oid, Deleted: true}, 0, nil, false)
						if err == nil {
							err = s.Write(oid, meta, 0, content(oid, v), false)
						}
					case 3:
						err = s.Put(oid, meta, content(oid, v), true)
					}
					if err != nil {
						errc <- fmt.Errorf("writer %d: %w", w, err)
						return
					}
				}
			}
		}()
	}
	var reads atomic.Int64
	for r := range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(r), 1))
			p := make([]byte, objBytes)
			for !stop.Load() {
				oid := uint64(rng.IntN(writers * perW))
				meta, err := s.Read(oid, 0, p)
				if errors.Is(err, ErrNotFound) {
					continue
				}
				if err != nil {
					errc <- fmt.Errorf("reader: %w", err)
					return
				}
				if meta.Deleted {
					if !isZero(p) {
						errc <- fmt.Errorf("reader: tombstone %d reads non-zero", oid)
						return
					}
				} else if !bytes.Equal(p, content(oid, meta.Version)) {
					errc <- fmt.Errorf("reader: object %d content does not match version %d", oid, meta.Version)
					return
				}
				if m, ok := s.Stat(oid); !ok || m.Version < meta.Version {
					errc <- fmt.Errorf("reader: Stat(%d) went backwards", oid)
					return
				}
				reads.Add(1)
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for !stop.Load() {
			if err := s.Sync(); err != nil {
				errc <- err
				return
			}
			_ = s.List()
			if _, _, err := s.Usage(); err != nil {
				errc <- err
				return
			}
		}
	}()
	wgW.Wait()
	stop.Store(true)
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	want := model{}
	for oid := range uint64(writers * perW) {
		want.put(oid, ObjectMeta{Version: rounds, ReqID: oid}, content(oid, rounds))
	}
	checkModel(t, s, want)
	closeT(t, s)
	s = openT(t, dir, quietOpts())
	defer closeT(t, s)
	checkModel(t, s, want)
}

func TestMeta(t *testing.T) {
	dir := t.TempDir()
	s := openT(t, dir, quietOpts())
	if _, err := s.GetMeta("node-id"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("GetMeta(missing) = %v", err)
	}
	must(t, s.PutMeta("node-id", []byte("sheep-1")))
	must(t, s.PutMeta("epoch", []byte{0, 0, 0, 7}))
	must(t, s.PutMeta("empty", nil))
	if err := s.PutMeta("", []byte("x")); !errors.Is(err, ErrInvalid) {
		t.Fatalf("PutMeta(empty key) = %v", err)
	}
	closeT(t, s)
	s = openT(t, dir, quietOpts())
	defer closeT(t, s)
	for _, tc := range []struct {
		key  string
		want []byte
	}{{"node-id", []byte("sheep-1")}, {"epoch", []byte{0, 0, 0, 7}}, {"empty", []byte{}}} {
		got, err := s.GetMeta(tc.key)
		if err != nil || !bytes.Equal(got, tc.want) {
			t.Fatalf("GetMeta(%q) = %q, %v; want %q", tc.key, got, err, tc.want)
		}
	}
}

// TestWriteOwned: Write copies the caller's buffer, WriteOwned and
// PutOwned keep it (no copy on the write path), and all read back and
// survive a reopen alike.
func TestWriteOwned(t *testing.T) {
	dir := t.TempDir()
	opt := quietOpts()
	opt.FlushInterval = -1 // nothing is applied before the check below
	s := openT(t, dir, opt)
	copied := pattern(1, 3*ChunkSize)
	owned := pattern(2, 256<<10)
	put := pattern(3, 2*ChunkSize+17)
	must(t, s.Write(1, ObjectMeta{Version: 1}, 0, copied, false))
	must(t, s.WriteOwned(2, ObjectMeta{Version: 1}, ChunkSize, owned, false))
	must(t, s.PutOwned(3, ObjectMeta{Version: 2}, put, false))
	wantCopied := bytes.Clone(copied)
	clear(copied) // the store has its own copy

	pendingData := func(oid uint64) []byte {
		o := s.lookup(oid)
		o.mu.Lock()
		defer o.mu.Unlock()
		if len(o.pending) == 0 {
			t.Fatalf("object %x has no pending operation (applied before the check)", oid)
		}
		return o.pending[len(o.pending)-1].data
	}
	if p := pendingData(1); &p[0] == &copied[0] {
		t.Error("Write kept the caller's buffer")
	}
	if p := pendingData(2); &p[0] != &owned[0] {
		t.Error("WriteOwned copied the caller's buffer")
	}
	if p := pendingData(3); &p[0] != &put[0] {
		t.Error("PutOwned copied the caller's buffer")
	}
	check := func(when string) {
		t.Helper()
		for _, c := range []struct {
			oid  uint64
			off  int64
			want []byte
		}{{1, 0, wantCopied}, {2, ChunkSize, owned}, {2, 0, make([]byte, ChunkSize)}, {3, 0, put}} {
			got := make([]byte, len(c.want))
			if _, err := s.Read(c.oid, c.off, got); err != nil {
				t.Fatalf("%s: read %x: %v", when, c.oid, err)
			}
			if !bytes.Equal(got, c.want) {
				t.Errorf("%s: object %x at %d differs", when, c.oid, c.off)
			}
		}
	}
	check("pending")
	must(t, s.Sync())
	closeT(t, s)
	s = openT(t, dir, quietOpts())
	defer closeT(t, s)
	check("after reopen")
}

// TestJournalPreallocSteps: the journal's preallocation grows in doubling
// steps (8, 16, 32, 64 MiB), so a stream of 1 MiB records stops for few
// fallocates. (A step that does not fit shrinks to what the record needs:
// TestNoSpaceJournal.)
func TestJournalPreallocSteps(t *testing.T) {
	var grows atomic.Int64
	opt := quietOpts()
	opt.FlushInterval = -1
	opt.JournalLimit = 1 << 30
	opt.Fault = func(p Fault) error {
		if p == FaultJournalAlloc {
			grows.Add(1)
		}
		return nil
	}
	s := openT(t, t.TempDir(), opt)
	defer closeT(t, s)
	data := pattern(1, 1<<20)
	for i := range 120 {
		must(t, s.Write(uint64(i/4), ObjectMeta{Version: 1}, int64(i%4)<<20, data, false))
	}
	// 8 MiB at creation, then +8, +16, +32, +64: 128 MiB covers 120
	// records in 4 steps (fixed 8 MiB steps would take 15).
	if n := grows.Load(); n > 5 {
		t.Errorf("120 MiB of records took %d journal preallocations, want at most 5", n)
	}
	s.jmu.Lock()
	alloc := s.jalloc
	s.jmu.Unlock()
	if alloc > 200<<20 {
		t.Errorf("journal preallocated %d MiB for 120 MiB of records", alloc>>20)
	}
}

// TestWouldWait: WouldWait tells in advance what admit would do: a
// mutation waits once MaxPending bytes are journaled but not applied, and
// no longer once they are applied.
func TestWouldWait(t *testing.T) {
	opt := quietOpts()
	opt.FlushInterval = -1
	opt.FlushBytes = 1 << 40
	opt.MaxPending = 1 << 20
	s := openT(t, t.TempDir(), opt)
	defer closeT(t, s)
	if s.WouldWait(64 << 10) {
		t.Fatal("an empty store would hold a write back")
	}
	must(t, s.Write(1, ObjectMeta{Version: 1}, 0, pattern(1, 1<<20-64<<10), false))
	if !s.WouldWait(128 << 10) {
		t.Fatal("a write past MaxPending would not wait")
	}
	if s.WouldWait(0) {
		t.Fatal("a data-less mutation below MaxPending would wait")
	}
	must(t, s.quiesce())
	if s.WouldWait(128 << 10) {
		t.Fatal("the store would still hold writes back after applying everything")
	}
}

// pieceRecorder records the writes it is given.
type pieceRecorder struct{ w [][2]int64 }

func (r *pieceRecorder) WriteAt(p []byte, off int64) (int, error) {
	r.w = append(r.w, [2]int64{off, int64(len(p))})
	return len(p), nil
}

// TestWritePieces: data goes to the file in writes that never cross a
// writePiece boundary, in order, covering exactly [off, off+len).
func TestWritePieces(t *testing.T) {
	const p = writePiece
	for _, tc := range []struct {
		name string
		off  int64
		n    int64
		want [][2]int64
	}{
		{"small", 4096, 4096, [][2]int64{{4096, 4096}}},
		{"one whole piece", p, p, [][2]int64{{p, p}}},
		{"across one boundary", p - 512, 1024, [][2]int64{{p - 512, 512}, {p, 512}}},
		{"1 MiB aligned", 0, 1 << 20, func() (w [][2]int64) {
			for o := int64(0); o < 1<<20; o += p {
				w = append(w, [2]int64{o, p})
			}
			return w
		}()},
		{"unaligned both ends", 100, 2*p + 50, [][2]int64{{100, p - 100}, {p, p}, {2 * p, 150}}},
		{"empty", 7, 0, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var r pieceRecorder
			if err := writePieces(&r, make([]byte, tc.n), tc.off); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, r.w); diff != "" {
				t.Errorf("writes (-want +got):\n%s", diff)
			}
		})
	}
}

// TestMetaOnlyWrite: a write of no bytes changes only the metadata (the
// core re-stamps a new snapshot's objects so), durably, and keeps the data.
func TestMetaOnlyWrite(t *testing.T) {
	dir := t.TempDir()
	s := openT(t, dir, quietOpts())
	data := bytes.Repeat([]byte{0xab}, 8192)
	if err := s.Put(7, ObjectMeta{Version: 5, ReqID: 9}, data, true); err != nil {
		t.Fatal(err)
	}
	stamped := ObjectMeta{Version: 1<<32 | 1<<31, ReqID: 9}
	if err := s.Write(7, stamped, 0, nil, true); err != nil {
		t.Fatalf("meta-only write: %v", err)
	}
	closeT(t, s)
	s = openT(t, dir, quietOpts())
	defer closeT(t, s)
	want := map[uint64]objDump{7: {Meta: stamped, Size: int64(len(data)), Data: data}}
	if diff := cmp.Diff(want, dump(t, s)); diff != "" {
		t.Fatalf("after reopening (-want +got):\n%s", diff)
	}
}

func TestJournalLimitFollowsTheFilesystem(t *testing.T) {
	for _, tc := range []struct {
		total uint64
		want  int64
	}{
		{1 << 40, DefaultJournalLimit},
		{4 << 30, DefaultJournalLimit},
		{256 << 20, 16 << 20},
		{64 << 20, journalPrealloc},
		{0, journalPrealloc},
	} {
		if got := journalLimitFor(tc.total); got != tc.want {
			t.Errorf("journalLimitFor(%d) = %d, want %d", tc.total, got, tc.want)
		}
	}
}
