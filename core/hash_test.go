package core

import (
	"testing"
)

func TestVDIIDMatchesSheepdog(t *testing.T) {
	tests := []struct {
		name string
		want uint32
	}{
		{"test", 0x7c2b25},
		{"", uint32(fnv1a64Init & (MaxVDIs - 1))},
		{"a", 0x01ec8c}, // fnv1a64("a") = 0xaf63dc4c8601ec8c
	}
	for _, tt := range tests {
		if got := HashVDIName(tt.name); got != tt.want {
			t.Errorf("HashVDIName(%q) = %#x, want %#x", tt.name, got, tt.want)
		}
	}
}

func TestFNV64aKnownVectors(t *testing.T) {
	// Reference values of 64-bit FNV-1a.
	tests := []struct {
		in   string
		want uint64
	}{
		{"", 0xcbf29ce484222325},
		{"a", 0xaf63dc4c8601ec8c},
		{"foobar", 0x85944171f73967e8},
	}
	for _, tt := range tests {
		if got := fnv64a([]byte(tt.in), fnv1a64Init); got != tt.want {
			t.Errorf("fnv64a(%q) = %#x, want %#x", tt.in, got, tt.want)
		}
	}
}

func TestFNV64a64EqualsBufferForm(t *testing.T) {
	// Sheepdog: fnv_64a_64(oid, h) == fnv_64a_buf(&oid, 8, h) on little-endian.
	for _, v := range []uint64{0, 1, 0x7c2b2500000001, 0xdeadbeefcafebabe} {
		var b [8]byte
		for i := range b {
			b[i] = byte(v >> (8 * i))
		}
		if got, want := fnv64a64(v, fnv1a64Init), fnv64a(b[:], fnv1a64Init); got != want {
			t.Errorf("fnv64a64(%#x) = %#x, want %#x", v, got, want)
		}
		if got, want := HashOID(OID(v)), sdHash(b[:]); got != want {
			t.Errorf("HashOID(%#x) = %#x, want sd_hash %#x", v, got, want)
		}
	}
}

func TestOIDLayout(t *testing.T) {
	vid := HashVDIName("test")
	tests := []struct {
		oid   OID
		want  uint64
		vid   uint32
		idx   uint32
		data  bool
		print string
	}{
		{DataOID(vid, 0), 0x007c2b2500000000, vid, 0, true, "007c2b2500000000"},
		{DataOID(vid, 1023), 0x007c2b25000003ff, vid, 1023, true, "007c2b25000003ff"},
		{InodeOID(vid), 0x807c2b2500000000, vid, 0, false, "807c2b2500000000"},
	}
	for _, tt := range tests {
		if uint64(tt.oid) != tt.want || tt.oid.VID() != tt.vid || tt.oid.Index() != tt.idx || tt.oid.IsData() != tt.data || tt.oid.String() != tt.print {
			t.Errorf("oid %#x: got (%#x vid %#x idx %d data %v %q)", tt.want, uint64(tt.oid), tt.oid.VID(), tt.oid.Index(), tt.oid.IsData(), tt.oid.String())
		}
	}
}
