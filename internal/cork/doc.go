// Package cork batches the records a TLS connection writes into fewer
// system calls.
//
// A crypto/tls Conn writes every record (at most 16 KiB of payload) with
// a Write of its own to the connection below it, so a 1 MiB NBD read
// reply cost 64 system calls over TLS where the plain connection needs
// one writev. A Conn sits below the tls.Conn: between Hold and Release
// the records it is given wait in a buffer (written out whenever it
// fills), and Release writes what is left in one call.
package cork
