package disk

import "testing"

// TestWritebackOfNewData: applying new data of at least writebackMin (a
// write past the object's end, a whole-object put) starts its writeback
// at once; overwrites and small writes are left to the checkpoint.
func TestWritebackOfNewData(t *testing.T) {
	s := openT(t, t.TempDir(), quietOpts())
	defer closeT(t, s)
	const mib = 1 << 20
	steps := []struct {
		name string
		do   func() error
		want uint64 // bytes written back at once by this step
	}{
		{"1 MiB into a new object", func() error { return s.Write(1, ObjectMeta{Version: 1}, 0, pattern(1, mib), false) }, mib},
		{"1 MiB over it", func() error { return s.Write(1, ObjectMeta{Version: 2}, 0, pattern(2, mib), false) }, 0},
		{"1 MiB half over it, half past its end", func() error {
			return s.Write(1, ObjectMeta{Version: 3}, mib/2, pattern(3, mib), false)
		}, mib / 2},
		{"4 KiB past its end", func() error { return s.Write(1, ObjectMeta{Version: 4}, 2*mib, pattern(4, 4096), false) }, 0},
		{"a put of 1 MiB", func() error { return s.Put(2, ObjectMeta{Version: 1}, pattern(5, mib), false) }, mib},
		{"a put of 64 KiB", func() error { return s.Put(3, ObjectMeta{Version: 1}, pattern(6, 64<<10), false) }, 0},
	}
	for _, st := range steps {
		before := s.writtenBack.Load()
		must(t, st.do())
		must(t, s.quiesce())
		if got := s.writtenBack.Load() - before; got != st.want {
			t.Errorf("%s: %d bytes written back at once, want %d", st.name, got, st.want)
		}
	}
}
