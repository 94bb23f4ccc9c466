package disk

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	bolt "go.etcd.io/bbolt"
	"go.etcd.io/raft/v3/raftpb"
)

// Fuzz targets for what a store reads from its directory at startup: the
// sidecar headers and checksum slots of objects, the journal records it
// replays, and the raft state kept in meta.db. A damaged directory may
// lose data (torn tails are discarded, damaged objects quarantined), but
// must never crash the store, make it allocate more than the files hold,
// or make it read back different data once it has recovered.

// fuzzReader reads fields from fuzz input; past its end it reads zeros.
type fuzzReader struct{ b []byte }

func (r *fuzzReader) left() bool { return len(r.b) > 0 }

func (r *fuzzReader) bytes(n int) []byte {
	out := make([]byte, n)
	copy(out, r.b)
	r.b = r.b[min(n, len(r.b)):]
	return out
}

func (r *fuzzReader) u8() uint8   { return r.bytes(1)[0] }
func (r *fuzzReader) u16() uint16 { return binary.LittleEndian.Uint16(r.bytes(2)) }
func (r *fuzzReader) u32() uint32 { return binary.LittleEndian.Uint32(r.bytes(4)) }
func (r *fuzzReader) u64() uint64 { return binary.LittleEndian.Uint64(r.bytes(8)) }

// The objects of a fuzzed store directory.
const (
	fuzzOID0 = 0x007c2b2500000001
	fuzzOID1 = 0x007c2b2500000002
)

// Flags of the first byte of a FuzzStoreOpen input.
const (
	fzSidecar   = 1 << 0 // obj/<oid0>.meta follows
	fzData      = 1 << 1 // obj/<oid0> follows
	fzFixHeader = 1 << 2 // give the sidecar a valid magic and header checksum
	fzTruncate  = 1 << 3 // cut the journal's last bytes (the input's last byte says how many)
	fzTwoFiles  = 1 << 4 // records go to two journal files
)

// Flags of a journal record of a FuzzStoreOpen input.
const (
	frRawOffset = 1 << 0 // the offset is 8 raw bytes (else 4, unsigned)
	frBadCRC    = 1 << 1 // the record's checksum is wrong
	frLSNGap    = 1 << 2 // its LSN skips one
	frOID1      = 1 << 3 // it is about oid1
	frDeleted   = 1 << 4 // its meta says deleted
	frRawLength = 1 << 5 // its length field is 4 raw bytes, whatever data follows
)

// journalHeader is the header of journal file seq.
func journalHeader(seq uint64) []byte {
	h := make([]byte, journalHdrSize)
	copy(h, journalMagic)
	binary.LittleEndian.PutUint64(h[8:], seq)
	binary.LittleEndian.PutUint32(h[28:], crc32.Checksum(h[:28], castagnoli))
	return h
}

// fuzzRecord encodes one journal record.
func fuzzRecord(kind opKind, lsn, oid uint64, meta ObjectMeta, off int64, length uint32, data []byte, badCRC bool) []byte {
	rh := make([]byte, recHdrSize)
	le := binary.LittleEndian
	le.PutUint32(rh[4:], length)
	le.PutUint64(rh[8:], lsn)
	le.PutUint64(rh[16:], oid)
	le.PutUint64(rh[24:], meta.Version)
	le.PutUint64(rh[32:], meta.ReqID)
	le.PutUint64(rh[40:], uint64(off))
	rh[48] = byte(kind)
	if meta.Deleted {
		rh[49] = flagDeleted
	}
	sum := crc32.Update(crc32.Checksum(rh[4:], castagnoli), castagnoli, data)
	if badCRC {
		sum++
	}
	le.PutUint32(rh[0:], sum)
	return append(rh, data...)
}

// record is what a fuzz input encodes for one journal record.
type record struct {
	kind, flags uint8
	version     uint16
	off         uint64
	length      uint32
	data        []byte
}

// encodeStoreInput is the inverse of the parsing in FuzzStoreOpen, for
// seeds.
func encodeStoreInput(flags uint8, sidecar, data []byte, recs []record, cut uint8) []byte {
	b := []byte{flags}
	if flags&fzSidecar != 0 {
		b = binary.LittleEndian.AppendUint16(b, uint16(len(sidecar)))
		b = append(b, sidecar...)
	}
	if flags&fzData != 0 {
		b = binary.LittleEndian.AppendUint16(b, uint16(len(data)))
		b = append(b, data...)
	}
	for _, r := range recs {
		b = append(b, r.kind, r.flags)
		b = binary.LittleEndian.AppendUint16(b, r.version)
		if r.flags&frRawOffset != 0 {
			b = binary.LittleEndian.AppendUint64(b, r.off)
		} else {
			b = binary.LittleEndian.AppendUint32(b, uint32(r.off))
		}
		if r.flags&frRawLength != 0 {
			b = binary.LittleEndian.AppendUint32(b, r.length)
		}
		b = binary.LittleEndian.AppendUint16(b, uint16(len(r.data)))
		b = append(b, r.data...)
	}
	if flags&fzTruncate != 0 {
		b = append(b, cut)
	}
	return b
}

// readWindow is what one read of a recovered object returned.
type readWindow struct {
	Off  int64
	Meta ObjectMeta
	Data []byte
	Err  string
}

// readBack reads windows of every object of s: its start, its end and
// where the journal wrote (at most 64 KiB each).
func readBack(t *testing.T, s *Store, offs []int64) map[uint64][]readWindow {
	t.Helper()
	out := make(map[uint64][]readWindow)
	for _, info := range s.List() {
		starts := append([]int64{0, max(0, info.Size-64<<10)}, offs...)
		for _, off := range starts {
			if off < 0 || off >= info.Size {
				continue
			}
			p := make([]byte, min(64<<10, info.Size-off))
			m, err := s.Read(info.OID, off, p)
			w := readWindow{Off: off, Meta: m, Data: p}
			if err != nil {
				// A damaged checksum table or a short sidecar: reported,
				// never served.
				if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrNotFound) && !isIOErr(err) {
					t.Fatalf("read of %016x at %d: unexpected error %v", info.OID, off, err)
				}
				w = readWindow{Off: off, Err: err.Error()}
			}
			out[info.OID] = append(out[info.OID], w)
		}
	}
	return out
}

// isIOErr reports an error of the file system (a short sidecar), which the
// store reports as "disk: ...".
func isIOErr(err error) bool {
	var pe *os.PathError
	return errors.As(err, &pe) || bytes.HasPrefix([]byte(err.Error()), []byte("disk: read checksums"))
}

// FuzzStoreOpen opens a store on a directory made from the input: an
// object's sidecar and data file, and journal records whose checksums are
// right unless the input says otherwise, with any kind, offset, length,
// LSN and meta. Open must succeed (damage is discarded or quarantined,
// not fatal), allocate no more than the files hold, serve reads that are
// right or refused, and after Close and a second Open serve the same.
func FuzzStoreOpen(f *testing.F) {
	chunk := bytes.Repeat([]byte{0x5a}, ChunkSize)
	hdr := encodeMetaHdr(ObjectMeta{Version: 3, ReqID: 4})
	slots := binary.LittleEndian.AppendUint32(nil, chunkSum(chunk))
	sidecar := append(append(bytes.Clone(hdr), make([]byte, 0)...), slots...)
	f.Add(encodeStoreInput(0, nil, nil, nil, 0))
	f.Add(encodeStoreInput(fzSidecar|fzData, sidecar, chunk, nil, 0))
	f.Add(encodeStoreInput(fzSidecar|fzData, sidecar, chunk, []record{
		{kind: uint8(opWrite), version: 5, off: 100, data: []byte("hello")},
		{kind: uint8(opWrite), flags: frOID1, version: 1, off: 8192, data: bytes.Repeat([]byte{7}, 5000)},
		{kind: uint8(opPut), flags: frOID1, version: 2, data: []byte("put")},
		{kind: uint8(opTomb), flags: frDeleted, version: 6},
		{kind: uint8(opDelete), flags: frOID1},
	}, 0))
	f.Add(encodeStoreInput(fzTwoFiles|fzTruncate, nil, nil, []record{
		{kind: uint8(opWrite), version: 1, off: 4096, data: chunk},
		{kind: uint8(opWrite), version: 2, off: 1, data: []byte("x")},
		{kind: uint8(opWrite), version: 3, off: 2, data: []byte("yz")},
	}, 3))
	f.Add(encodeStoreInput(0, nil, nil, []record{
		{kind: uint8(opWrite), flags: frRawOffset, off: 1 << 63, data: []byte("negative")},
	}, 0))
	f.Add(encodeStoreInput(0, nil, nil, []record{
		{kind: uint8(opWrite), flags: frRawOffset, off: 1 << 40, data: []byte("far")},
	}, 0))
	f.Add(encodeStoreInput(0, nil, nil, []record{
		{kind: uint8(opWrite), flags: frRawLength, length: maxRecordData, data: []byte("long")},
	}, 0))
	f.Add(encodeStoreInput(0, nil, nil, []record{
		{kind: uint8(opWrite), data: []byte("a")},
		{kind: uint8(opWrite), flags: frBadCRC, data: []byte("b")},
		{kind: uint8(opWrite), flags: frLSNGap, data: []byte("c")},
		{kind: 9, data: []byte("d")},
	}, 0))
	f.Add(encodeStoreInput(fzSidecar|fzData|fzFixHeader, []byte("SDOBJMD1 short"), chunk[:100], nil, 0))
	f.Add(encodeStoreInput(fzSidecar|fzFixHeader, bytes.Repeat([]byte{0xff}, 200), nil, []record{
		{kind: uint8(opWrite), off: 10, data: []byte("partial write over a bad slot")},
	}, 0))

	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) > 1<<16 {
			return
		}
		dir := t.TempDir()
		// Replay is under test, not durability: no fsyncs and
		// small preallocations, which were most of an execution's time.
		opts := quietOpts()
		opts.hooks = &testHooks{light: true}
		r := &fuzzReader{b: in}
		flags := r.u8()
		objDir, jDir := filepath.Join(dir, "obj"), filepath.Join(dir, "journal")
		for _, d := range []string{objDir, jDir} {
			if err := os.MkdirAll(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		name0 := filepath.Join(objDir, fmt.Sprintf("%016x", uint64(fuzzOID0)))
		if flags&fzSidecar != 0 {
			b := r.bytes(int(r.u16()) % (16 << 10))
			if flags&fzFixHeader != 0 && len(b) >= 32 {
				copy(b, metaMagic)
				binary.LittleEndian.PutUint32(b[28:], crc32.Checksum(b[:28], castagnoli))
			}
			if err := os.WriteFile(name0+metaSuffix, b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		if flags&fzData != 0 {
			if err := os.WriteFile(name0, r.bytes(int(r.u16())%(32<<10)), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		files := [][]byte{journalHeader(1), journalHeader(2)}
		var offs []int64
		lsn := uint64(1)
		for i := 0; r.left() && i < 64; i++ {
			kind, rf := opKind(r.u8()), r.u8()
			meta := ObjectMeta{Version: uint64(r.u16()), ReqID: uint64(i), Deleted: rf&frDeleted != 0}
			var off int64
			if rf&frRawOffset != 0 {
				off = int64(r.u64())
			} else {
				off = int64(r.u32())
			}
			length := uint32(0)
			rawLength := rf&frRawLength != 0
			if rawLength {
				length = r.u32()
			}
			data := r.bytes(int(r.u16()) % (16 << 10))
			if !rawLength {
				length = uint32(len(data))
			}
			if rf&frLSNGap != 0 {
				lsn++
			}
			oid := uint64(fuzzOID0)
			if rf&frOID1 != 0 {
				oid = fuzzOID1
			}
			file := 0
			if flags&fzTwoFiles != 0 && i%2 == 1 {
				file = 1
			}
			files[file] = append(files[file], fuzzRecord(kind, lsn, oid, meta, off, length, data, rf&frBadCRC != 0)...)
			offs = append(offs, off)
			lsn++
		}
		if flags&fzTruncate != 0 && len(in) > 0 {
			last := len(files) - 1
			if flags&fzTwoFiles == 0 {
				last = 0
			}
			files[last] = files[last][:max(0, len(files[last])-int(in[len(in)-1]))]
		}
		nfiles := 1
		if flags&fzTwoFiles != 0 {
			nfiles = 2
		}
		var total int64
		for i := range nfiles {
			if err := os.WriteFile(filepath.Join(jDir, journalName(uint64(i+1))), files[i], 0o644); err != nil {
				t.Fatal(err)
			}
			total += int64(len(files[i]))
		}

		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		s, err := Open(dir, opts)
		runtime.ReadMemStats(&after)
		if err != nil {
			t.Fatalf("Open of a damaged directory failed: %v", err)
		}
		// The journal reader's buffer, the store's tables and what the
		// files hold; never what a record claims beyond them.
		if got, bound := after.TotalAlloc-before.TotalAlloc, uint64(8<<20+8*total+int64(len(in))); got > bound {
			s.Close()
			t.Fatalf("Open allocated %d bytes for %d bytes of journal (bound %d)", got, total, bound)
		}
		first := readBack(t, s, offs)
		if err := s.Close(); err != nil {
			t.Fatalf("Close after recovery: %v", err)
		}
		s, err = Open(dir, opts)
		if err != nil {
			t.Fatalf("second Open: %v", err)
		}
		second := readBack(t, s, offs)
		if err := s.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
		// What the first recovery served, the second serves too (reads
		// it refused may be quarantined by then).
		for oid, ws := range first {
			for i, w := range ws {
				if w.Err != "" {
					continue
				}
				var got *readWindow
				for j := range second[oid] {
					if second[oid][j].Off == w.Off {
						got = &second[oid][j]
						break
					}
				}
				if got == nil {
					t.Fatalf("object %016x: window %d at %d served, then gone after reopening", oid, i, w.Off)
				}
				// cmp.Diff only to explain a difference: it compares a
				// []byte one reflected element at a time, which was most
				// of an execution's CPU.
				if w.Off == got.Off && w.Meta == got.Meta && w.Err == got.Err && bytes.Equal(w.Data, got.Data) {
					continue
				}
				if diff := cmp.Diff(w, *got); diff != "" {
					t.Fatalf("object %016x at %d after reopening (-first +second):\n%s", oid, w.Off, diff)
				}
			}
		}
	})
}

// FuzzMetaHdr decodes sidecar headers. One that decodes re-encodes to a
// header that decodes the same, and the encoding is stable.
func FuzzMetaHdr(f *testing.F) {
	f.Add(encodeMetaHdr(ObjectMeta{}))
	f.Add(encodeMetaHdr(ObjectMeta{Version: 1<<40 | 3, ReqID: 99, Deleted: true}))
	f.Add([]byte(metaMagic))
	f.Add(bytes.Repeat([]byte{0xff}, metaHdrSize))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, ok := decodeMetaHdr(b)
		if !ok {
			if m != (ObjectMeta{}) {
				t.Fatalf("refused header decodes as %+v", m)
			}
			return
		}
		enc := encodeMetaHdr(m)
		m2, ok := decodeMetaHdr(enc)
		if !ok || m2 != m {
			t.Fatalf("header %+v re-decodes as %+v (%v)", m, m2, ok)
		}
		if !bytes.Equal(enc[:24], b[:24]) {
			t.Fatalf("header %+v re-encodes as %x, decoded from %x", m, enc[:24], b[:24])
		}
		if !bytes.Equal(encodeMetaHdr(m2), enc) {
			t.Fatal("header encoding is not stable")
		}
	})
}

// FuzzLoadRaft stores arbitrary values as the hard state, the snapshot and
// the log entries of meta.db, and loads them as a node does at startup.
// Damage is ErrCorrupt, never a panic; what loads re-encodes to values
// that load the same, and the entries come in index order.
func FuzzLoadRaft(f *testing.F) {
	hs, _ := (&raftpb.HardState{Term: 3, Vote: 1, Commit: 7}).Marshal()
	snap, _ := (&raftpb.Snapshot{Data: []byte("state"), Metadata: raftpb.SnapshotMetadata{Index: 5, Term: 2,
		ConfState: raftpb.ConfState{Voters: []uint64{1, 2, 3}, Learners: []uint64{4}}}}).Marshal()
	e6, _ := (&raftpb.Entry{Term: 2, Index: 6, Type: raftpb.EntryNormal, Data: []byte("cmd")}).Marshal()
	e7, _ := (&raftpb.Entry{Term: 3, Index: 7, Type: raftpb.EntryConfChange, Data: []byte{8, 1, 16, 4}}).Marshal()
	enc := func(vals ...[]byte) []byte {
		var b []byte
		for _, v := range vals {
			b = binary.LittleEndian.AppendUint16(b, uint16(len(v)))
			b = append(b, v...)
		}
		return b
	}
	f.Add(enc(hs, snap, e6, e7))
	f.Add(enc(hs, nil))
	f.Add(enc(nil, snap))
	f.Add(enc(hs, snap, e6[:len(e6)-1]))
	f.Add(enc([]byte{0xff, 0xff}, []byte{0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f}))
	f.Add(enc(nil, nil, []byte{0x1a, 0xff, 0xff, 0xff, 0x7f}))

	// One store for every execution of this process, whose meta.db each
	// rewrites (without fsync).
	s, err := Open(f.TempDir(), quietOpts())
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { s.Close() })
	s.db.NoSync = true
	f.Fuzz(func(t *testing.T, in []byte) {
		var vals [][]byte
		r := &fuzzReader{b: in}
		for r.left() && len(vals) < 2+32 {
			vals = append(vals, r.bytes(int(r.u16())%(8<<10)))
		}
		for len(vals) < 2 {
			vals = append(vals, nil)
		}
		err := s.db.Update(func(tx *bolt.Tx) error {
			rb := tx.Bucket(bucketRaft)
			for i, k := range [][]byte{keyHardState, keySnapshot} {
				if len(vals[i]) == 0 {
					if err := rb.Delete(k); err != nil {
						return err
					}
				} else if err := rb.Put(k, vals[i]); err != nil {
					return err
				}
			}
			if err := tx.DeleteBucket(bucketRaftLog); err != nil {
				return err
			}
			lb, err := tx.CreateBucket(bucketRaftLog)
			if err != nil {
				return err
			}
			for i, v := range vals[2:] {
				if err := lb.Put(idxKey(uint64(i+1)), v); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		rs, err := s.LoadRaft()
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("damaged raft state: %v, want ErrCorrupt", err)
			}
			return
		}
		if len(rs.Entries) != len(vals)-2 {
			t.Fatalf("%d entries stored, %d loaded", len(vals)-2, len(rs.Entries))
		}
		// Loaded values survive another round through their encoding.
		var rs2 RaftState
		hb, err := rs.HardState.Marshal()
		if err == nil {
			err = rs2.HardState.Unmarshal(hb)
		}
		if err != nil {
			t.Fatalf("hard state round trip: %v", err)
		}
		sb, err := rs.Snapshot.Marshal()
		if err == nil {
			err = rs2.Snapshot.Unmarshal(sb)
		}
		if err != nil {
			t.Fatalf("snapshot round trip: %v", err)
		}
		for _, e := range rs.Entries {
			eb, err := e.Marshal()
			var e2 raftpb.Entry
			if err == nil {
				err = e2.Unmarshal(eb)
			}
			if err != nil {
				t.Fatalf("entry round trip: %v", err)
			}
			rs2.Entries = append(rs2.Entries, e2)
		}
		if diff := cmp.Diff(rs, rs2, cmpopts.EquateEmpty()); diff != "" {
			t.Fatalf("raft state round trip (-loaded +again):\n%s", diff)
		}
	})
}
