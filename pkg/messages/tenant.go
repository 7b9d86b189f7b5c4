package messages

import (
	"errors"
	"fmt"
)

// Tenants every installation has. A request without a tenant (an older
// publisher, or one that names none) is TenantAnonymous's.
const (
	// TenantAnonymous is the tenant of requests that name none: callers of a
	// gateway without keys, and publishers that do not set Llmq-Tenant.
	TenantAnonymous = "anonymous"
	// TenantMaster is the tenant of requests sent with
	// general_settings.master_key.
	TenantMaster = "master"
)

// MaxTenantBytes bounds the length of a tenant name.
const MaxTenantBytes = 128

// ErrBadTenant reports a tenant name [ValidTenant] refuses.
var ErrBadTenant = errors.New("bad tenant name")

// ValidTenant checks a tenant name: 1 to [MaxTenantBytes] bytes of printable
// ASCII (space to '~'), not beginning or ending with a space. It is what a
// header value can carry unchanged.
func ValidTenant(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: empty", ErrBadTenant)
	case len(name) > MaxTenantBytes:
		return fmt.Errorf("%w: %d bytes, at most %d", ErrBadTenant, len(name), MaxTenantBytes)
	case name[0] == ' ' || name[len(name)-1] == ' ':
		return fmt.Errorf("%w: %q begins or ends with a space", ErrBadTenant, name)
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c < ' ' || c > '~' {
			return fmt.Errorf("%w: %q has a byte outside printable ASCII at %d", ErrBadTenant, name, i)
		}
	}
	return nil
}
