package batch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
)

// File is a file as OpenAI's API shows it.
type File struct {
	ID        string `json:"id"`
	Object    string `json:"object"` // "file"
	Bytes     int64  `json:"bytes"`
	CreatedAt int64  `json:"created_at"`
	Filename  string `json:"filename"`
	Purpose   string `json:"purpose"`
	Status    string `json:"status"` // "processed"
	// StatusDetails is deprecated in OpenAI's API and always null here.
	StatusDetails *string `json:"status_details"`
}

// File purposes.
const (
	PurposeBatch       = "batch"
	PurposeBatchOutput = "batch_output"
)

// Object metadata keys of a stored file.
const (
	metaOwner    = "owner"
	metaPurpose  = "purpose"
	metaFilename = "filename"
	metaCreated  = "created_at"
	metaLines    = "lines"
	metaURL      = "url"
)

// storedFile is a file with what only llmq sees.
type storedFile struct {
	File
	owner string
	lines int
	url   string
}

func fileOf(info *jetstream.ObjectInfo) *storedFile {
	m := info.Metadata
	created, _ := strconv.ParseInt(m[metaCreated], 10, 64)
	lines, _ := strconv.Atoi(m[metaLines])
	return &storedFile{
		File: File{ID: info.Name, Object: "file", Bytes: int64(info.Size), CreatedAt: created,
			Filename: m[metaFilename], Purpose: m[metaPurpose], Status: "processed"},
		owner: m[metaOwner], lines: lines, url: m[metaURL],
	}
}

// ErrNotFound is a file or batch that does not exist or that the caller may
// not see.
var ErrNotFound = errors.New("not found")

// uploadBatchFile streams r into the files bucket while checking it as a
// batch input file. The file is never held whole: the object store reads r
// in chunks. A file that fails the check is removed and the check's error
// (a *LineError, or errTooLarge) returned.
func (s *Service) uploadBatchFile(ctx context.Context, owner, filename string, r io.Reader) (*storedFile, error) {
	c := newChecker(s.opts.MaxFileLines, s.opts.MaxLineBytes, s.opts.MaxFileBytes)
	id := "file-" + nuid.Next()
	created := s.now().Unix()
	meta := jetstream.ObjectMeta{Name: id, Metadata: map[string]string{
		metaOwner: owner, metaPurpose: PurposeBatch, metaFilename: filename, metaCreated: strconv.FormatInt(created, 10),
	}}
	info, err := s.files.Put(ctx, meta, io.TeeReader(r, c))
	var lines int
	var url string
	if err == nil {
		lines, url, err = c.finish()
	}
	if err != nil {
		if info != nil {
			_ = s.files.Delete(context.WithoutCancel(ctx), id)
		}
		var le *LineError
		if errors.As(err, &le) {
			return nil, le
		}
		if errors.Is(err, errTooLarge) {
			return nil, errTooLarge
		}
		return nil, fmt.Errorf("store the file: %w", err)
	}
	// The line count and url are known only now: they go into the
	// object's metadata with a second, small write.
	meta.Metadata[metaLines] = strconv.Itoa(lines)
	meta.Metadata[metaURL] = url
	if err := s.files.UpdateMeta(ctx, id, meta); err != nil {
		_ = s.files.Delete(context.WithoutCancel(ctx), id)
		return nil, fmt.Errorf("store the file's metadata: %w", err)
	}
	info.Metadata = meta.Metadata
	return fileOf(info), nil
}

// putOutput stores a file the service made (a batch's output or errors).
func (s *Service) putOutput(ctx context.Context, id, owner, filename string, r io.Reader) (*storedFile, error) {
	meta := jetstream.ObjectMeta{Name: id, Metadata: map[string]string{
		metaOwner: owner, metaPurpose: PurposeBatchOutput, metaFilename: filename, metaCreated: strconv.FormatInt(s.now().Unix(), 10),
	}}
	info, err := s.files.Put(ctx, meta, r)
	if err != nil {
		return nil, err
	}
	return fileOf(info), nil
}

// visible reports whether the caller (owner name, master) may see f.
func visible(owner string, master bool, fileOwner string) bool { return master || owner == fileOwner }

// file returns the file id as the caller may see it.
func (s *Service) file(ctx context.Context, id, owner string, master bool) (*storedFile, error) {
	info, err := s.files.GetInfo(ctx, id)
	switch {
	case errors.Is(err, jetstream.ErrObjectNotFound) || errors.Is(err, jetstream.ErrInvalidStoreName):
		return nil, ErrNotFound
	case err != nil:
		return nil, err
	}
	f := fileOf(info)
	if !visible(owner, master, f.owner) {
		return nil, ErrNotFound
	}
	return f, nil
}

// listFiles returns the caller's files, newest first, filtered by purpose
// when it is not empty.
func (s *Service) listFiles(ctx context.Context, owner string, master bool, purpose string) ([]*storedFile, error) {
	infos, err := s.files.List(ctx)
	if errors.Is(err, jetstream.ErrNoObjectsFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []*storedFile
	for _, info := range infos {
		f := fileOf(info)
		if visible(owner, master, f.owner) && (purpose == "" || f.Purpose == purpose) {
			out = append(out, f)
		}
	}
	slices.SortStableFunc(out, func(a, b *storedFile) int {
		if a.CreatedAt != b.CreatedAt {
			return int(b.CreatedAt - a.CreatedAt)
		}
		return compareIDs(b.ID, a.ID)
	})
	return out, nil
}

func compareIDs(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func (s *Service) deleteFile(ctx context.Context, id string) error {
	err := s.files.Delete(ctx, id)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return ErrNotFound
	}
	return err
}
