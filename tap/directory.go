package tap

import (
	"encoding/json"
	"strconv"
	"strings"
	"sync"
)

// dirUser is what the directory keeps of a user.
type dirUser struct {
	PK       int64  `json:"pk"`
	UID      string `json:"uid,omitempty"`
	Username string `json:"username,omitempty"`
	Email    string `json:"email,omitempty"`
	IsActive *bool  `json:"is_active,omitempty"`
}

// dirDevice is what the directory keeps of a device.
type dirDevice struct {
	Owner     int64  `json:"owner"`
	Confirmed bool   `json:"confirmed"`
	Name      string `json:"name,omitempty"`
}

// directory is a small, bounded map kept current through look-ups: user pk
// → uid, email, is_active; device → owner, confirmed. Without authentik's
// (enterprise-only) diff, a model_updated record says only that something
// changed; comparing against the directory says what. Changes are persisted
// with the next commit of the poller or the worker (drain).
type directory struct {
	mu      sync.Mutex
	max     int
	users   map[int64]dirUser
	uids    map[string]int64
	devices map[string]dirDevice
	pending map[string]Mark
}

func newDirectory(max int) *directory {
	return &directory{max: max, users: map[int64]dirUser{}, uids: map[string]int64{},
		devices: map[string]dirDevice{}, pending: map[string]Mark{}}
}

func userKey(pk int64) string           { return "u/" + strconv.FormatInt(pk, 10) }
func deviceKey(dtype, pk string) string { return "d/" + dtype + "/" + pk }

func (d *directory) user(pk int64) (User, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	u, ok := d.users[pk]
	if !ok || u.UID == "" {
		return User{}, false
	}
	return User{PK: u.PK, UID: u.UID, Username: u.Username, Email: u.Email}, true
}

func (d *directory) userState(pk int64) (dirUser, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	u, ok := d.users[pk]
	return u, ok
}

func (d *directory) byUID(uid string) (User, bool) {
	d.mu.Lock()
	pk, ok := d.uids[uid]
	d.mu.Unlock()
	if !ok {
		return User{}, false
	}
	return d.user(pk)
}

// noteUser records a user as authentik just described it.
func (d *directory) noteUser(u akUser) {
	if u.PK <= 0 {
		return
	}
	d.putUser(dirUser{PK: u.PK, UID: u.UID, Username: u.Username, Email: u.Email, IsActive: u.IsActive})
}

// noteEmail records a user's new email when the user is known.
func (d *directory) noteEmail(pk int64, email string) {
	u, ok := d.userState(pk)
	if !ok {
		return
	}
	u.Email = email
	d.putUser(u)
}

func (d *directory) putUser(u dirUser) {
	d.mu.Lock()
	defer d.mu.Unlock()
	old, ok := d.users[u.PK]
	if ok {
		if u.UID == "" {
			u.UID = old.UID
		}
		if u.IsActive == nil {
			u.IsActive = old.IsActive
		}
		if old == u || (old.UID == u.UID && old.Email == u.Email && old.Username == u.Username &&
			old.IsActive != nil && u.IsActive != nil && *old.IsActive == *u.IsActive) {
			return
		}
	} else {
		d.evictLocked()
	}
	d.users[u.PK] = u
	if u.UID != "" {
		d.uids[u.UID] = u.PK
	}
	b, _ := json.Marshal(u)
	k := userKey(u.PK)
	d.pending[k] = Mark{Bucket: BucketDirectory, Key: []byte(k), Value: b}
}

// addUser records a user only if the directory does not know it yet (a
// seed must not overwrite the state an earlier run persisted: comparing
// against that state is how changes made while the sidecar was down show).
func (d *directory) addUser(u akUser) {
	d.mu.Lock()
	_, known := d.users[u.PK]
	full := len(d.users)+len(d.devices) >= d.max
	d.mu.Unlock()
	if !known && !full && u.PK > 0 {
		d.noteUser(u)
	}
}

func (d *directory) forgetUser(pk int64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if u, ok := d.users[pk]; ok {
		delete(d.uids, u.UID)
		delete(d.users, pk)
	}
	k := userKey(pk)
	d.pending[k] = Mark{Bucket: BucketDirectory, Key: []byte(k), Delete: true}
}

func (d *directory) device(dtype, pk string) (dirDevice, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	v, ok := d.devices[deviceKey(dtype, pk)]
	return v, ok
}

func (d *directory) putDevice(dtype, pk string, v dirDevice) {
	d.mu.Lock()
	defer d.mu.Unlock()
	k := deviceKey(dtype, pk)
	if old, ok := d.devices[k]; ok && old == v {
		return
	} else if !ok {
		d.evictLocked()
	}
	d.devices[k] = v
	b, _ := json.Marshal(v)
	d.pending[k] = Mark{Bucket: BucketDirectory, Key: []byte(k), Value: b}
}

func (d *directory) forgetDevice(dtype, pk string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	k := deviceKey(dtype, pk)
	delete(d.devices, k)
	d.pending[k] = Mark{Bucket: BucketDirectory, Key: []byte(k), Delete: true}
}

// evictLocked makes room for one more entry.
func (d *directory) evictLocked() {
	for len(d.users)+len(d.devices) >= d.max {
		for pk, u := range d.users {
			delete(d.users, pk)
			delete(d.uids, u.UID)
			k := userKey(pk)
			d.pending[k] = Mark{Bucket: BucketDirectory, Key: []byte(k), Delete: true}
			break
		}
		if len(d.users)+len(d.devices) < d.max {
			return
		}
		for k := range d.devices {
			delete(d.devices, k)
			d.pending[k] = Mark{Bucket: BucketDirectory, Key: []byte(k), Delete: true}
			break
		}
	}
}

// drain returns the directory changes not yet persisted.
func (d *directory) drain() []Mark {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.pending) == 0 {
		return nil
	}
	out := make([]Mark, 0, len(d.pending))
	for _, m := range d.pending {
		out = append(out, m)
	}
	d.pending = map[string]Mark{}
	return out
}

// load reads the persisted directory.
func (d *directory) load(kv KV) error {
	return kv.Scan(BucketDirectory, nil, func(k, v []byte) error {
		key := string(k)
		switch {
		case strings.HasPrefix(key, "u/"):
			var u dirUser
			if json.Unmarshal(v, &u) == nil && u.PK > 0 {
				d.mu.Lock()
				d.users[u.PK] = u
				if u.UID != "" {
					d.uids[u.UID] = u.PK
				}
				d.mu.Unlock()
			}
		case strings.HasPrefix(key, "d/"):
			var dv dirDevice
			if json.Unmarshal(v, &dv) == nil {
				d.mu.Lock()
				d.devices[key] = dv
				d.mu.Unlock()
			}
		}
		return nil
	})
}

func containsFold(s, sub string) bool {
	return strings.Contains(strings.ToLower(s), strings.ToLower(sub))
}
