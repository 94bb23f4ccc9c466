package nbd

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestMemBackendAttach(t *testing.T) {
	ctx := t.Context()
	mb := NewMemBackend()
	v := mb.Add("a", 8192)
	mb.Add("b", 4096).SetDescription("bee")

	if _, err := mb.Open(ctx, "nope"); !errors.Is(err, ErrUnknownExport) {
		t.Errorf("Open(nope) = %v, want ErrUnknownExport", err)
	}
	got, err := mb.Open(ctx, "a")
	if err != nil || got != Volume(v) || !v.Attached() {
		t.Fatalf("Open(a) = %v, %v", got, err)
	}
	if _, err := mb.Open(ctx, "a"); !errors.Is(err, ErrBusy) || !bytes.Contains([]byte(err.Error()), []byte("attached elsewhere")) {
		t.Errorf("second Open(a) = %v, want ErrBusy", err)
	}
	if _, err := mb.Open(ctx, "b"); err != nil {
		t.Errorf("Open(b) while a is attached: %v", err)
	}
	if err := got.Close(); err != nil || v.Attached() {
		t.Fatalf("Close: %v, attached %v", err, v.Attached())
	}
	if err := got.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := mb.Open(ctx, "a"); err != nil {
		t.Errorf("Open(a) after Close: %v", err)
	}

	list, err := mb.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]Export{{Name: "a"}, {Name: "b", Description: "bee"}}, list); diff != "" {
		t.Errorf("List (-want +got):\n%s", diff)
	}
}

func TestMemBackendAttachWait(t *testing.T) {
	mb := NewMemBackend()
	mb.AttachWait = time.Hour
	v := mb.Add("a", 4096)
	if _, err := mb.Open(t.Context(), "a"); err != nil {
		t.Fatal(err)
	}
	opened := make(chan error, 1)
	go func() {
		_, err := mb.Open(t.Context(), "a")
		opened <- err
	}()
	v.Close() // the waiting Open gets it
	if err := <-opened; err != nil {
		t.Fatalf("waiting Open: %v", err)
	}

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := mb.Open(ctx, "a"); !errors.Is(err, context.Canceled) {
		t.Errorf("Open with cancelled context while attached = %v", err)
	}
}

func TestMemVolume(t *testing.T) {
	ctx := t.Context()
	const size = 64 << 10
	v := NewMemBackend().Add("v", size)
	buf := func(b byte, n int) []byte { return bytes.Repeat([]byte{b}, n) }
	hole := func(n uint64) Extent { return Extent{Length: n, Hole: true, Zero: true} }
	data := func(n uint64) Extent { return Extent{Length: n} }
	steps := []struct {
		name string
		op   func() error
		want []Extent // extents of the whole volume afterwards
	}{
		{"empty", func() error { return nil }, []Extent{hole(size)}},
		{"write unaligned", func() error { return v.WriteAt(ctx, buf(1, 100), 4000, false) },
			[]Extent{data(8192), hole(size - 8192)}},
		{"write more", func() error { return v.WriteAt(ctx, buf(2, 16384), 16384, true) },
			[]Extent{data(8192), hole(8192), data(16384), hole(size - 32768)}},
		{"trim partial chunk keeps it", func() error { return v.Trim(ctx, 16384, 100, false) },
			[]Extent{data(8192), hole(8192), data(16384), hole(size - 32768)}},
		{"trim whole chunk", func() error { return v.Trim(ctx, 16384, 4096, false) },
			[]Extent{data(8192), hole(12288), data(12288), hole(size - 32768)}},
		{"zero deallocates", func() error { return v.Zero(ctx, 20480, 4096, ZeroFlags{}) },
			[]Extent{data(8192), hole(16384), data(8192), hole(size - 32768)}},
		{"zero with NO_HOLE allocates", func() error { return v.Zero(ctx, size-4096, 4096, ZeroFlags{NoHole: true}) },
			[]Extent{data(8192), hole(16384), data(8192), hole(size - 36864), data(4096)}},
	}
	for _, s := range steps {
		if err := s.op(); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		got, err := v.Extents(ctx, 0, size)
		if err != nil {
			t.Fatalf("%s: Extents: %v", s.name, err)
		}
		if diff := cmp.Diff(s.want, got); diff != "" {
			t.Errorf("%s: extents (-want +got):\n%s", s.name, diff)
		}
	}

	// Contents: trimmed and zeroed ranges read as zeroes.
	want := make([]byte, size)
	copy(want[4000:], buf(1, 100))
	copy(want[16384:], buf(2, 16384))
	clear(want[16384 : 16384+4096])
	clear(want[20480 : 20480+4096])
	got := make([]byte, size)
	if err := v.ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(want, got) {
		t.Errorf("contents differ")
	}
	if ext, _ := v.Extents(ctx, 4000, 200); !cmp.Equal([]Extent{data(200)}, ext) {
		t.Errorf("Extents of a sub-range: %v", ext)
	}
}

func TestMemVolumeErrors(t *testing.T) {
	ctx := t.Context()
	v := NewMemBackend().Add("v", 8192)
	tests := []struct {
		name string
		err  error
		want error
	}{
		{"read beyond end", v.ReadAt(ctx, make([]byte, 2), 8191), ErrInvalid},
		{"write beyond end", v.WriteAt(ctx, make([]byte, 2), 8191, false), ErrNoSpace},
		{"trim beyond end", v.Trim(ctx, 8192, 1, false), ErrInvalid},
		{"zero beyond end", v.Zero(ctx, 1<<40, 1, ZeroFlags{}), ErrNoSpace},
		{"extents beyond end", func() error { _, err := v.Extents(ctx, 0, 8193); return err }(), ErrInvalid},
	}
	v.SetFastZero(false)
	tests = append(tests, struct {
		name string
		err  error
		want error
	}{"slow zero", v.Zero(ctx, 0, 4096, ZeroFlags{FastZero: true}), ErrNotFast})
	v.SetReadOnly(true)
	tests = append(tests, []struct {
		name string
		err  error
		want error
	}{
		{"write read-only", v.WriteAt(ctx, make([]byte, 1), 0, false), ErrPermission},
		{"trim read-only", v.Trim(ctx, 0, 1, false), ErrPermission},
		{"zero read-only", v.Zero(ctx, 0, 1, ZeroFlags{}), ErrPermission},
		{"read read-only", v.ReadAt(ctx, make([]byte, 1), 0), nil},
	}...)
	for _, tt := range tests {
		if !errors.Is(tt.err, tt.want) || (tt.want == nil) != (tt.err == nil) {
			t.Errorf("%s: %v, want %v", tt.name, tt.err, tt.want)
		}
	}
}
