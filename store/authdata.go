package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"gorm.io/gorm"
	"gorm.io/gorm/clause"
)

// ErrNotFound is returned when a client, user, refresh token or launch does not exist.
var ErrNotFound = errors.New("store: not found")

// Client is an application registered to obtain tokens.
type Client struct {
	ID           string `gorm:"primaryKey"`
	Name         string
	Kind         string // public, confidential, backend
	SecretHash   string
	RedirectURIs string // space-separated
	LaunchURI    string
	Scopes       string // the most the client may be granted (space-separated); "" places no limit for apps
	JWKS         string // inline JSON Web Key Set (private_key_jwt)
	JWKSURL      string `gorm:"column:jwks_url"`
	Created      int64
	Disabled     int64
}

// TableName is the table of clients.
func (Client) TableName() string { return "clients" }

// User is a person who logs in: a patient, a practitioner or a representative.
type User struct {
	Username     string `gorm:"primaryKey"`
	PasswordHash string
	FHIRUser     string `gorm:"column:fhir_user"` // Patient/x, Practitioner/x, RelatedPerson/x
	Created      int64
	Disabled     int64
}

// TableName is the table of users.
func (User) TableName() string { return "users" }

// RefreshToken is one refresh token, stored by the hash of its value. Tokens of one grant share a family.
type RefreshToken struct {
	Hash     string `gorm:"primaryKey"`
	Family   string
	ClientID string
	Subject  string
	FHIRUser string `gorm:"column:fhir_user"`
	Patient  string
	Scope    string
	Expires  int64
	Created  int64
	Used     int64
	Revoked  int64
}

// TableName is the table of refresh tokens.
func (RefreshToken) TableName() string { return "refresh_tokens" }

type issuedToken struct {
	JTI     string `gorm:"column:jti;primaryKey"`
	Family  string
	Expires int64
}

func (issuedToken) TableName() string { return "issued_tokens" }

// Launch is an EHR launch context, minted by the EHR side before the app is opened.
type Launch struct {
	ID        string `gorm:"primaryKey"`
	ClientID  string
	Patient   string
	Encounter string
	FHIRUser  string `gorm:"column:fhir_user"`
	Expires   int64
}

// TableName is the table of launches.
func (Launch) TableName() string { return "launches" }

func notFound(err error) error {
	if errors.Is(err, gorm.ErrRecordNotFound) {
		return ErrNotFound
	}
	return err
}

// PutClient creates or replaces a client.
func (s *Store) PutClient(ctx context.Context, c *Client) error {
	if c.Created == 0 {
		c.Created = s.now().Unix()
	}
	err := s.gdb.WithContext(ctx).Clauses(clause.OnConflict{UpdateAll: true}).Create(c).Error
	if err != nil {
		return fmt.Errorf("store: saving client: %w", err)
	}
	return nil
}

// Client returns a client, or ErrNotFound.
func (s *Store) Client(ctx context.Context, id string) (*Client, error) {
	var c Client
	if err := s.gdb.WithContext(ctx).Where("id = ?", id).Take(&c).Error; err != nil {
		return nil, notFound(err)
	}
	return &c, nil
}

// Clients lists every client.
func (s *Store) Clients(ctx context.Context) ([]Client, error) {
	var cs []Client
	err := s.gdb.WithContext(ctx).Order("id").Find(&cs).Error
	return cs, err
}

// DeleteClient removes a client; ErrNotFound when there is none.
func (s *Store) DeleteClient(ctx context.Context, id string) error {
	r := s.gdb.WithContext(ctx).Where("id = ?", id).Delete(&Client{})
	if r.Error != nil {
		return r.Error
	}
	if r.RowsAffected == 0 {
		return ErrNotFound
	}
	return nil
}

// PutUser creates or replaces a user.
func (s *Store) PutUser(ctx context.Context, u *User) error {
	if u.Created == 0 {
		u.Created = s.now().Unix()
	}
	err := s.gdb.WithContext(ctx).Clauses(clause.OnConflict{UpdateAll: true}).Create(u).Error
	if err != nil {
		return fmt.Errorf("store: saving user: %w", err)
	}
	return nil
}

// User returns a user, or ErrNotFound.
func (s *Store) User(ctx context.Context, username string) (*User, error) {
	var u User
	if err := s.gdb.WithContext(ctx).Where("username = ?", username).Take(&u).Error; err != nil {
		return nil, notFound(err)
	}
	return &u, nil
}

// Users lists every user.
func (s *Store) Users(ctx context.Context) ([]User, error) {
	var us []User
	err := s.gdb.WithContext(ctx).Order("username").Find(&us).Error
	return us, err
}

// PutRefreshToken stores a new refresh token.
func (s *Store) PutRefreshToken(ctx context.Context, t *RefreshToken) error {
	if t.Created == 0 {
		t.Created = s.now().Unix()
	}
	return s.gdb.WithContext(ctx).Create(t).Error
}

// UseRefreshToken marks a refresh token used and returns it as it was. It returns ErrNotFound for an unknown hash.
// The caller tells reuse (Used already set) from first use: marking is atomic, so of two concurrent uses one sees
// the token unused and the other used.
func (s *Store) UseRefreshToken(ctx context.Context, hash string) (*RefreshToken, error) {
	var out *RefreshToken
	err := s.gdb.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		var t RefreshToken
		if err := tx.Where("hash = ?", hash).Take(&t).Error; err != nil {
			return notFound(err)
		}
		r := tx.Model(&RefreshToken{}).Where("hash = ? AND used = 0", hash).Update("used", 1)
		if r.Error != nil {
			return r.Error
		}
		if r.RowsAffected == 0 {
			t.Used = 1
		}
		out = &t
		return nil
	})
	return out, err
}

// RefreshTokenByHash returns a refresh token without using it (introspection).
func (s *Store) RefreshTokenByHash(ctx context.Context, hash string) (*RefreshToken, error) {
	var t RefreshToken
	if err := s.gdb.WithContext(ctx).Where("hash = ?", hash).Take(&t).Error; err != nil {
		return nil, notFound(err)
	}
	return &t, nil
}

// RecordIssued remembers an access token issued within a grant family, so the family can be revoked whole.
func (s *Store) RecordIssued(ctx context.Context, jti, family string, exp time.Time) error {
	return s.gdb.WithContext(ctx).Create(&issuedToken{JTI: jti, Family: family, Expires: exp.Unix()}).Error
}

// RevokeFamily marks every refresh token of a family revoked and returns the access tokens issued in it that have
// not expired, for the caller to revoke.
func (s *Store) RevokeFamily(ctx context.Context, family string) (map[string]time.Time, error) {
	if err := s.gdb.WithContext(ctx).Model(&RefreshToken{}).Where("family = ?", family).Update("revoked", 1).Error; err != nil {
		return nil, fmt.Errorf("store: revoking a token family: %w", err)
	}
	var issued []issuedToken
	if err := s.gdb.WithContext(ctx).Where("family = ? AND expires > ?", family, s.now().Unix()).Find(&issued).Error; err != nil {
		return nil, err
	}
	out := map[string]time.Time{}
	for _, t := range issued {
		out[t.JTI] = time.Unix(t.Expires, 0)
	}
	return out, nil
}

// Families lists the grants (refresh-token families) not yet revoked of a user (by username) or of a client;
// give one of the two.
func (s *Store) Families(ctx context.Context, username, clientID string) ([]string, error) {
	q := s.gdb.WithContext(ctx).Model(&RefreshToken{}).Distinct("family").Where("revoked = 0")
	if username != "" {
		q = q.Where("subject = ?", username)
	}
	if clientID != "" {
		q = q.Where("client_id = ?", clientID)
	}
	var out []string
	if err := q.Pluck("family", &out).Error; err != nil {
		return nil, fmt.Errorf("store: listing grants: %w", err)
	}
	return out, nil
}

// PutLaunch records an EHR launch context.
func (s *Store) PutLaunch(ctx context.Context, l *Launch) error {
	return s.gdb.WithContext(ctx).Create(l).Error
}

// Launch returns an unexpired launch context, or ErrNotFound.
func (s *Store) Launch(ctx context.Context, id string) (*Launch, error) {
	var l Launch
	if err := s.gdb.WithContext(ctx).Where("id = ? AND expires > ?", id, s.now().Unix()).Take(&l).Error; err != nil {
		return nil, notFound(err)
	}
	return &l, nil
}
