// Package certs makes and loads the certificates of a sheepdog cluster's
// mutual TLS: one cluster CA, a certificate per node and per client, all
// ECDSA P-256 keys signed with crypto/x509.
//
// # Files
//
// A CA directory D holds the cluster CA (InitCA):
//
//	D/ca-cert.pem   the CA's certificate (10 years by default)
//	D/ca-key.pem    its private key (0600): whoever has it can issue certificates
//
// IssueNode and IssueClient write into D/NAME, in the layout QEMU's
// tls-creds-x509 object (dir=) and libnbd's tls-certificates= read, so one
// directory serves sheepdog, QEMU, qemu-img and nbdinfo alike:
//
//	D/NAME/ca-cert.pem      a copy of the CA certificate
//	D/NAME/server-cert.pem  node only: its certificate, with the --host names and addresses
//	D/NAME/server-key.pem   node only: its key (0600)
//	D/NAME/client-cert.pem  the certificate used when dialing
//	D/NAME/client-key.pem   its key (0600)
//
// A node dials its peers as a TLS client and serves them as a TLS server,
// so a node directory has both halves. They are the same certificate and
// key under both names: one node certificate carries both extended key
// usages (server and client authentication), which keeps a node's
// identity single and its renewal one command. A client directory has
// only the client half; its certificate has no names and authenticates
// clients only.
//
// Certificates are written to a temporary file and renamed into place,
// so a reader never sees half a file. Existing files are never
// overwritten unless Options.Force is set: the error names them.
//
// # Loading
//
// ServerConfig and ClientConfig build the *tls.Config of the two sides
// from a directory. Both require TLS 1.3 and a peer certificate signed by
// the CA in ca-cert.pem; a server also checks that a client's certificate
// allows client authentication, a client that the server's names include
// the host it dialed. Every handshake looks at the certificate and key
// files again (a stat; they are read only when their size, modification
// time or inode changed), so a renewed certificate is used without a
// restart. A pair that cannot be loaded (for instance the moment between
// the renames of a new key and its certificate) leaves the previous pair
// in use. The accepting side also reloads ca-cert.pem, which may hold an
// old and a new CA during a CA rollover; the dialing side reads it once.
package certs
