package net

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// FuzzHandshake feeds arbitrary bytes to the two handshake decoders: the
// hello a listener reads from whoever connects (first byte 0) and the ack
// a dialer reads back (otherwise). Neither may panic; what they accept
// re-encodes to the bytes they read; their failures are ErrMalformed or a
// closed connection.
func FuzzHandshake(f *testing.F) {
	hb := make([]byte, helloSize)
	putHello(hb, hello{version: ProtocolVersion, role: rolePeer, node: 7})
	f.Add(append([]byte{0}, hb...))
	putHello(hb, hello{version: 1, role: roleAdmin, node: 1 << 63})
	f.Add(append([]byte{0}, hb...))
	f.Add(append([]byte{0}, []byte("GET / HTTP/1.1\r\n")...))
	f.Add(append([]byte{1}, appendAck(nil, ack{version: ProtocolVersion, status: statusOK, node: 3})...))
	f.Add(append([]byte{1}, appendAck(nil, ack{version: 2, status: statusVersion, node: 9, reason: "protocol version 1 not supported"})...))
	f.Add(append([]byte{1}, appendAck(nil, ack{status: statusRole, reason: strings.Repeat("x", maxReason)})...))
	f.Add([]byte{1, 0x53, 0x44})
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) == 0 {
			return
		}
		if in[0] == 0 {
			b := in[1:]
			if len(b) < helloSize {
				return // the transport reads exactly helloSize bytes first
			}
			h, err := parseHello(b[:helloSize])
			if err != nil {
				if !errors.Is(err, ErrMalformed) {
					t.Fatalf("hello error %v is not ErrMalformed", err)
				}
				return
			}
			re := make([]byte, helloSize)
			putHello(re, h)
			if !bytes.Equal(re, b[:helloSize]) {
				t.Fatalf("hello %+v re-encodes as %x, read from %x", h, re, b[:helloSize])
			}
			return
		}
		r := bytes.NewReader(in[1:])
		a, err := readAck(r)
		if err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, io.EOF) {
				t.Fatalf("ack error %v is neither ErrMalformed nor a closed connection", err)
			}
			return
		}
		if len(a.reason) > maxReason {
			t.Fatalf("ack reason of %d bytes", len(a.reason))
		}
		read := in[1 : len(in)-r.Len()]
		re := appendAck(nil, a)
		if !bytes.Equal(re[:7], read[:7]) || !bytes.Equal(re[8:], read[8:]) { // byte 7 is reserved
			t.Fatalf("ack %+v re-encodes as %x, read from %x", a, re, read)
		}
		a2, err := readAck(bytes.NewReader(re))
		if err != nil {
			t.Fatalf("re-encoded ack does not decode: %v", err)
		}
		if diff := cmp.Diff(a, a2, cmp.AllowUnexported(ack{})); diff != "" {
			t.Fatalf("decode(encode(ack)) differs (-a +a2):\n%s", diff)
		}
	})
}
