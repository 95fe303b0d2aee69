package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"gorm.io/gorm"
	"gorm.io/gorm/clause"
)

// Names of settings that `carta serve` records so that every process sharing the store (replicas, `carta token`,
// `carta import`) agrees on them.
const (
	SettingFHIRBase = "fhir_base" // the FHIR base URL, also the audience of access tokens
	SettingIssuer   = "issuer"    // the issuer of access tokens
)

type setting struct {
	Name  string `gorm:"primaryKey"`
	Value string
}

func (setting) TableName() string { return "settings" }

// Setting returns a recorded setting, or "" and false when it was never set.
func (s *Store) Setting(ctx context.Context, name string) (string, bool) {
	var st setting
	err := s.gdb.WithContext(ctx).Where("name = ?", name).Take(&st).Error
	if err != nil {
		return "", false
	}
	return st.Value, true
}

// SetSetting records a setting.
func (s *Store) SetSetting(ctx context.Context, name, value string) error {
	err := s.gdb.WithContext(ctx).Clauses(clause.OnConflict{
		Columns:   []clause.Column{{Name: "name"}},
		DoUpdates: clause.AssignmentColumns([]string{"value"}),
	}).Create(&setting{Name: name, Value: value}).Error
	if err != nil {
		return fmt.Errorf("store: saving setting %s: %w", name, err)
	}
	return nil
}

// SigningKey is a private key the server signs tokens with, PEM-encoded.
type SigningKey struct {
	KID        string `gorm:"column:kid;primaryKey"`
	Alg        string
	PrivatePEM string `gorm:"column:private_pem"`
	Created    int64
	Retired    int64
}

// TableName is the table of signing keys.
func (SigningKey) TableName() string { return "signing_keys" }

// SigningKeys returns every key, newest first. Retired keys stay until their tokens can no longer be valid.
func (s *Store) SigningKeys(ctx context.Context) ([]SigningKey, error) {
	var keys []SigningKey
	if err := s.gdb.WithContext(ctx).Order("created DESC").Find(&keys).Error; err != nil {
		return nil, fmt.Errorf("store: reading signing keys: %w", err)
	}
	return keys, nil
}

// AddSigningKey stores a new key. It returns ErrExists when a key with that id is already stored, which happens
// when two replicas create the first key at once; the caller then reads the stored one.
func (s *Store) AddSigningKey(ctx context.Context, k SigningKey) error {
	err := s.gdb.WithContext(ctx).Create(&k).Error
	if errors.Is(err, gorm.ErrDuplicatedKey) {
		return ErrExists
	}
	if err != nil {
		return fmt.Errorf("store: saving signing key: %w", err)
	}
	return nil
}

// RetireSigningKey marks a key as no longer used for signing.
func (s *Store) RetireSigningKey(ctx context.Context, kid string, at time.Time) error {
	return s.gdb.WithContext(ctx).Model(&SigningKey{}).Where("kid = ?", kid).Update("retired", at.Unix()).Error
}

// ErrExists is returned when a row to be created is already there.
var ErrExists = errors.New("store: already exists")

type revokedToken struct {
	JTI     string `gorm:"column:jti;primaryKey"`
	Expires int64
}

func (revokedToken) TableName() string { return "revoked_tokens" }

// Revoke records that the token with id jti, valid until exp, must no longer be accepted.
func (s *Store) Revoke(ctx context.Context, jti string, exp time.Time) error {
	err := s.gdb.WithContext(ctx).Clauses(clause.OnConflict{DoNothing: true}).Create(&revokedToken{JTI: jti, Expires: exp.Unix()}).Error
	if err != nil {
		return fmt.Errorf("store: revoking token: %w", err)
	}
	return nil
}

// Revoked returns the ids of revoked tokens that have not yet expired, with their expiry, and deletes the rest.
func (s *Store) Revoked(ctx context.Context) (map[string]time.Time, error) {
	now := s.now().Unix()
	if err := s.gdb.WithContext(ctx).Where("expires < ?", now).Delete(&revokedToken{}).Error; err != nil {
		return nil, fmt.Errorf("store: pruning revoked tokens: %w", err)
	}
	var rows []revokedToken
	if err := s.gdb.WithContext(ctx).Find(&rows).Error; err != nil {
		return nil, fmt.Errorf("store: reading revoked tokens: %w", err)
	}
	out := make(map[string]time.Time, len(rows))
	for _, r := range rows {
		out[r.JTI] = time.Unix(r.Expires, 0)
	}
	return out, nil
}
