package net

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"runtime"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// corrupt returns a copy of b with f applied.
func corrupt(b []byte, f func([]byte)) []byte {
	b = bytes.Clone(b)
	f(b)
	return b
}

func TestReadFrame(t *testing.T) {
	const limit = 1 << 10
	good := rawFrame(typeRequest, 42, []byte("hello, sheep"))
	tests := []struct {
		name    string
		in      []byte
		want    header
		payload string
		wantErr string // substring; "" means success
		eof     bool   // want exactly io.EOF
	}{
		{name: "request", in: good, want: header{typ: typeRequest, length: 12, id: 42}, payload: "hello, sheep"},
		{name: "empty message", in: rawFrame(typeMessage, 0, nil), want: header{typ: typeMessage}},
		{name: "error response", in: rawFrame(typeError, 7, []byte("boom")), want: header{typ: typeError, length: 4, id: 7}, payload: "boom"},
		{name: "at limit", in: rawFrame(typeMessage, 0, make([]byte, limit)), want: header{typ: typeMessage, length: limit}, payload: string(make([]byte, limit))},
		{name: "clean end", in: nil, eof: true},
		{name: "bad magic", in: corrupt(good, func(b []byte) { b[0] ^= 0xff }), wantErr: "bad magic"},
		{name: "unknown type", in: corrupt(good, func(b []byte) { b[4] = 9 }), wantErr: "unknown frame type 9"},
		{name: "type zero", in: corrupt(good, func(b []byte) { b[4] = 0 }), wantErr: "unknown frame type 0"},
		{name: "flags", in: corrupt(good, func(b []byte) { b[5] = 0x80 }), wantErr: "unknown flags"},
		{name: "reserved", in: corrupt(good, func(b []byte) { b[7] = 1 }), wantErr: "reserved"},
		{name: "over limit", in: rawFrame(typeMessage, 0, make([]byte, limit+1)), wantErr: "exceeds limit"},
		{name: "huge length", in: corrupt(good, func(b []byte) { binary.BigEndian.PutUint32(b[8:12], 0xffffffff) }), wantErr: "exceeds limit"},
		{name: "bad crc", in: corrupt(good, func(b []byte) { b[12] ^= 1 }), wantErr: "bad CRC32C"},
		{name: "flipped payload bit", in: corrupt(good, func(b []byte) { b[headerSize+3] ^= 4 }), wantErr: "bad CRC32C"},
		{name: "truncated header", in: good[:10], wantErr: "truncated header (10 of 24 bytes)"},
		{name: "truncated payload", in: good[:headerSize+5], wantErr: "truncated request frame (5 of 12 payload bytes)"},
		{name: "header only", in: good[:headerSize], wantErr: "truncated request frame (0 of 12"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var hdr [headerSize]byte
			h, p, err := readFrame(bytes.NewReader(tt.in), &hdr, limit)
			switch {
			case tt.eof:
				if err != io.EOF {
					t.Fatalf("err = %v, want io.EOF", err)
				}
			case tt.wantErr != "":
				if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want ErrMalformed containing %q", err, tt.wantErr)
				}
			default:
				if err != nil {
					t.Fatal(err)
				}
				tt.want.sum = h.sum // checked by readFrame itself
				if diff := cmp.Diff(tt.want, h, cmp.AllowUnexported(header{})); diff != "" {
					t.Errorf("header (-want +got):\n%s", diff)
				}
				if string(p) != tt.payload {
					t.Errorf("payload = %q, want %q", p, tt.payload)
				}
			}
		})
	}
}

func TestOversizedIsAlsoErrFrameTooLarge(t *testing.T) {
	var hdr [headerSize]byte
	_, _, err := readFrame(bytes.NewReader(rawFrame(typeMessage, 0, make([]byte, 100))), &hdr, 99)
	if !errors.Is(err, ErrFrameTooLarge) || !errors.Is(err, ErrMalformed) {
		t.Fatalf("err = %v, want ErrMalformed and ErrFrameTooLarge", err)
	}
}

func TestHandshakeCodec(t *testing.T) {
	in := hello{version: 7, role: roleAdmin, node: 1<<63 + 5}
	b := make([]byte, helloSize)
	putHello(b, in)
	got, err := parseHello(b)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(in, got, cmp.AllowUnexported(hello{})); diff != "" {
		t.Errorf("hello (-want +got):\n%s", diff)
	}
	if _, err := parseHello(corrupt(b, func(b []byte) { b[1] = 0 })); !errors.Is(err, ErrMalformed) {
		t.Errorf("bad magic: err = %v", err)
	}

	acks := []ack{
		{version: 1, status: statusOK, node: 3},
		{version: 2, status: statusVersion, node: 9, reason: "protocol version 1 not supported"},
		{version: 1, status: statusRole, node: 0, reason: strings.Repeat("x", maxReason)},
	}
	for _, a := range acks {
		got, err := readAck(bytes.NewReader(appendAck(nil, a)))
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(a, got, cmp.AllowUnexported(ack{})); diff != "" {
			t.Errorf("ack (-want +got):\n%s", diff)
		}
	}
	long := appendAck(nil, ack{reason: strings.Repeat("y", 2*maxReason)})
	if got, err := readAck(bytes.NewReader(long)); err != nil || len(got.reason) != maxReason {
		t.Errorf("long reason: got %d bytes, err %v; want truncation to %d", len(got.reason), err, maxReason)
	}
	bad := appendAck(nil, ack{})
	binary.BigEndian.PutUint16(bad[16:18], maxReason+1)
	if _, err := readAck(bytes.NewReader(bad)); !errors.Is(err, ErrMalformed) {
		t.Errorf("oversized reason: err = %v, want ErrMalformed", err)
	}
	if _, err := readAck(bytes.NewReader(bad[:5])); !errors.Is(err, ErrMalformed) {
		t.Errorf("truncated ack: err = %v, want ErrMalformed", err)
	}
}

// FuzzFrame feeds arbitrary bytes to the frame decoder, with the
// transport's default frame limit. It must never panic; every frame it
// accepts must re-encode to exactly the bytes it consumed; every failure
// is either a clean end or ErrMalformed; and it allocates in proportion
// to the bytes it got, not to the lengths headers announce.
func FuzzFrame(f *testing.F) {
	const limit = DefaultMaxFrame
	f.Add([]byte{})
	f.Add(rawFrame(typeMessage, 0, []byte("payload")))
	f.Add(rawFrame(typeRequest, 1, nil))
	f.Add(rawFrame(typeResponse, 1<<40, bytes.Repeat([]byte{0xa5}, 300)))
	f.Add(rawFrame(typeError, 3, []byte("no such vdi")))
	f.Add(append(rawFrame(typeMessage, 0, []byte("a")), rawFrame(typeMessage, 0, []byte("bc"))...))
	f.Add(rawFrame(typeMessage, 0, []byte("payload"))[:20])
	f.Add(corrupt(rawFrame(typeMessage, 0, []byte("crc")), func(b []byte) { b[13]++ }))
	f.Add(corrupt(rawFrame(typeMessage, 0, nil), func(b []byte) { binary.BigEndian.PutUint32(b[8:12], limit+1) }))
	f.Add(corrupt(rawFrame(typeMessage, 0, []byte("short")), func(b []byte) { binary.BigEndian.PutUint32(b[8:12], limit) }))
	f.Add([]byte("GET / HTTP/1.1\r\nHost: sheep\r\n\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		var hdr [headerSize]byte
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		defer func() {
			runtime.ReadMemStats(&after)
			// A frame claiming more than it carries costs at most one
			// payload step, whatever its header says.
			if got, bound := after.TotalAlloc-before.TotalAlloc, uint64(payloadStep+4*len(data)+1<<16); got > bound {
				t.Fatalf("decoding %d bytes allocated %d bytes (bound %d)", len(data), got, bound)
			}
		}()
		for {
			start := len(data) - r.Len()
			h, p, err := readFrame(r, &hdr, limit)
			if err != nil {
				if err != io.EOF && !errors.Is(err, ErrMalformed) {
					t.Fatalf("unexpected error class: %v", err)
				}
				return
			}
			if len(p) != int(h.length) || len(p) > limit {
				t.Fatalf("payload of %d bytes for header length %d", len(p), h.length)
			}
			consumed := data[start : len(data)-r.Len()]
			if re := rawFrame(h.typ, h.id, p); !bytes.Equal(re, consumed) {
				t.Fatalf("re-encoding differs:\n got %x\nwant %x", re, consumed)
			}
		}
	})
}

// TestFramePayloadAllocatedAsItArrives: a header announcing the largest
// frame, followed by a few bytes, does not make the reader allocate the
// whole frame; a large frame that does arrive is read whole.
func TestFramePayloadAllocatedAsItArrives(t *testing.T) {
	short := corrupt(rawFrame(typeMessage, 0, []byte("short")), func(b []byte) { binary.BigEndian.PutUint32(b[8:12], DefaultMaxFrame) })
	var hdr [headerSize]byte
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, _, err := readFrame(bytes.NewReader(short), &hdr, DefaultMaxFrame)
	runtime.ReadMemStats(&after)
	if !errors.Is(err, ErrMalformed) {
		t.Fatalf("truncated frame: %v", err)
	}
	if got := after.TotalAlloc - before.TotalAlloc; got > 2*payloadStep {
		t.Errorf("a 29-byte frame claiming %d bytes allocated %d bytes", DefaultMaxFrame, got)
	}
	for _, n := range []int{payloadStep - 1, payloadStep, payloadStep + 1, 3*payloadStep + 5} {
		want := bytes.Repeat([]byte{byte(n)}, n)
		h, got, err := readFrame(bytes.NewReader(rawFrame(typeMessage, 0, want)), &hdr, DefaultMaxFrame)
		if err != nil || int(h.length) != n || !bytes.Equal(got, want) {
			t.Fatalf("frame of %d bytes: %v, read %d bytes", n, err, len(got))
		}
	}
}
