package client

import (
	"errors"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go"
)

// Security holds the ways to authenticate to NATS and secure the
// connection. Use at most one of CredsFile, NKeySeedFile, User/Password and
// Token; TLS settings combine with any of them.
type Security struct {
	CredsFile    string // a .creds file (JWT and nkey seed)
	NKeySeedFile string // a file holding an nkey seed
	User         string
	Password     string
	Token        string
	CAFile       string // PEM roots to verify the server; enables TLS
	CertFile     string // client certificate (PEM), with KeyFile
	KeyFile      string
	// InboxPrefix replaces "_INBOX" as the prefix of reply subjects, so that
	// NATS permissions can give each role a private reply space.
	InboxPrefix string
}

// Options returns the nats.go options for s.
func (s Security) Options() ([]nats.Option, error) {
	var opts []nats.Option
	n := 0
	if s.CredsFile != "" {
		opts = append(opts, nats.UserCredentials(s.CredsFile))
		n++
	}
	if s.NKeySeedFile != "" {
		o, err := nats.NkeyOptionFromSeed(s.NKeySeedFile)
		if err != nil {
			return nil, fmt.Errorf("nkey seed file: %w", err)
		}
		opts = append(opts, o)
		n++
	}
	if s.User != "" || s.Password != "" {
		opts = append(opts, nats.UserInfo(s.User, s.Password))
		n++
	}
	if s.Token != "" {
		opts = append(opts, nats.Token(s.Token))
		n++
	}
	if n > 1 {
		return nil, errors.New("use only one of: credentials file, nkey seed, user/password, token")
	}
	if s.CAFile != "" {
		opts = append(opts, nats.RootCAs(s.CAFile))
	}
	if (s.CertFile == "") != (s.KeyFile == "") {
		return nil, errors.New("a TLS client certificate needs both the certificate and the key file")
	}
	if s.CertFile != "" {
		opts = append(opts, nats.ClientCert(s.CertFile, s.KeyFile))
	}
	if s.InboxPrefix != "" {
		opts = append(opts, nats.CustomInboxPrefix(s.InboxPrefix))
	}
	return opts, nil
}

// Connect dials url (one or more comma-separated NATS URLs) with sec and
// further options, reconnecting forever once connected. Authentication
// failures are reported as such.
func Connect(url string, sec Security, opts ...nats.Option) (*nats.Conn, error) {
	secOpts, err := sec.Options()
	if err != nil {
		return nil, err
	}
	all := append([]nats.Option{nats.MaxReconnects(-1)}, secOpts...)
	nc, err := nats.Connect(url, append(all, opts...)...)
	switch {
	case err == nil:
		return nc, nil
	case errors.Is(err, nats.ErrAuthorization) || errors.Is(err, nats.ErrAuthExpired) || strings.Contains(strings.ToLower(err.Error()), "authorization"):
		return nil, fmt.Errorf("NATS at %s refused the credentials (check the user/password, token, nkey or creds settings): %w", redact(url), err)
	default:
		return nil, fmt.Errorf("connect to NATS at %s: %w", redact(url), err)
	}
}

// redact hides passwords in URLs like nats://user:secret@host.
func redact(url string) string {
	parts := strings.Split(url, ",")
	for i, p := range parts {
		scheme, rest, ok := strings.Cut(p, "://")
		if !ok {
			continue
		}
		if at := strings.LastIndexByte(rest, '@'); at >= 0 {
			if user, _, hasPw := strings.Cut(rest[:at], ":"); hasPw {
				parts[i] = scheme + "://" + user + ":***@" + rest[at+1:]
			}
		}
	}
	return strings.Join(parts, ",")
}
