package core

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// errShort is returned when a buffer ends before its declared contents.
var errShort = errors.New("core: truncated encoding")

// enc appends little-endian fields to a byte slice.
type enc struct{ b []byte }

func (e *enc) u8(v uint8)   { e.b = append(e.b, v) }
func (e *enc) u16(v uint16) { e.b = binary.LittleEndian.AppendUint16(e.b, v) }
func (e *enc) u32(v uint32) { e.b = binary.LittleEndian.AppendUint32(e.b, v) }
func (e *enc) u64(v uint64) { e.b = binary.LittleEndian.AppendUint64(e.b, v) }
func (e *enc) i64(v int64)  { e.u64(uint64(v)) }
func (e *enc) bool(v bool) {
	if v {
		e.u8(1)
	} else {
		e.u8(0)
	}
}
func (e *enc) bytes(v []byte) { e.u32(uint32(len(v))); e.b = append(e.b, v...) }
func (e *enc) str(v string)   { e.u32(uint32(len(v))); e.b = append(e.b, v...) }

// dec reads what enc wrote; the first error sticks and later reads
// return zero values, so callers check err once at the end.
type dec struct {
	b   []byte
	err error
}

func (d *dec) need(n int) bool {
	if d.err != nil {
		return false
	}
	if len(d.b) < n {
		d.err = errShort
		return false
	}
	return true
}

func (d *dec) u8() uint8 {
	if !d.need(1) {
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

func (d *dec) u16() uint16 {
	if !d.need(2) {
		return 0
	}
	v := binary.LittleEndian.Uint16(d.b)
	d.b = d.b[2:]
	return v
}

func (d *dec) u32() uint32 {
	if !d.need(4) {
		return 0
	}
	v := binary.LittleEndian.Uint32(d.b)
	d.b = d.b[4:]
	return v
}

func (d *dec) u64() uint64 {
	if !d.need(8) {
		return 0
	}
	v := binary.LittleEndian.Uint64(d.b)
	d.b = d.b[8:]
	return v
}

func (d *dec) i64() int64 { return int64(d.u64()) }
func (d *dec) bool() bool { return d.u8() != 0 }

// bytes returns a sub-slice of the input (no copy) or nil when empty.
func (d *dec) bytes() []byte {
	n := int(d.u32())
	if n == 0 || !d.need(n) {
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

func (d *dec) str() string { return string(d.bytes()) }

// count reads a length prefix for a list of items each at least min bytes
// long, refusing lengths the remaining input cannot hold.
func (d *dec) count(min int) int {
	n := int(d.u32())
	if d.err == nil && n*min > len(d.b) {
		d.err = fmt.Errorf("core: list of %d items in %d bytes: %w", n, len(d.b), errShort)
		return 0
	}
	return n
}

func (d *dec) done() error {
	if d.err == nil && len(d.b) != 0 {
		return fmt.Errorf("core: %d trailing bytes", len(d.b))
	}
	return d.err
}

func encodeNode(e *enc, n NodeInfo) {
	e.u64(uint64(n.ID))
	e.str(n.Addr)
	e.str(n.NBDAddr)
	e.u32(n.Zone)
	e.u16(n.VNodes)
	e.u64(n.Incarnation)
	e.u64(n.Capacity)
}

func decodeNode(d *dec) NodeInfo {
	return NodeInfo{
		ID:          NodeID(d.u64()),
		Addr:        d.str(),
		NBDAddr:     d.str(),
		Zone:        d.u32(),
		VNodes:      d.u16(),
		Incarnation: d.u64(),
		Capacity:    d.u64(),
	}
}
