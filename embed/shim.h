// The header-free binding to libpython: opaque CPython types, the few
// structs passed by value (layouts stable in 3.11-3.14), one table of
// function pointers resolved with dlsym, and operations that each run one
// complete step (take the GIL on the calling thread, act, fetch any error,
// release) so Go makes one cgo call per step.
#ifndef SNAKEPIT_SHIM_H
#define SNAKEPIT_SHIM_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <wchar.h>

typedef struct _object PyObject;
typedef struct _ts PyThreadState;
typedef struct _is PyInterpreterState;
typedef struct PyInitConfig PyInitConfig;
typedef ssize_t Py_ssize_t;

// PyStatus, returned by value by Py_NewInterpreterFromConfig.
typedef struct {
	int _type;
	const char *func;
	const char *err_msg;
	int exitcode;
} spk_PyStatus;

// PyInterpreterConfig (3.12-3.14): seven ints.
typedef struct {
	int use_main_obmalloc;
	int allow_fork;
	int allow_exec;
	int allow_threads;
	int allow_daemon_threads;
	int check_multi_interp_extensions;
	int gil;
} spk_PyInterpreterConfig;

// Result of an operation. status: SPK_OK, or one of the SPK_E* codes with
// details in the strings (malloc'd, freed by spk_result_free).
enum {
	SPK_OK = 0,
	SPK_EPYTHON = 1,       // a Python exception: etype, emsg, etb
	SPK_EUNSERIALIZABLE = 2, // result marshal cannot carry: emsg names it
	SPK_EINTERNAL = 3,     // emsg says what failed outside Python
};

typedef struct {
	int status;
	char *out;          // marshalled result: the caller's buffer or malloc'd
	Py_ssize_t out_len;
	int out_heap;       // out was malloc'd (did not fit the caller's buffer)
	int out_raw;        // out is the content of a bytes result, not marshalled
	void *held;         // spk_fcall: out points into a Python buffer kept for the caller (spk_release_held)
	void *held_entry;
	char *etype;
	char *emsg;
	char *etb;
} spk_result;

// Loading and initialisation.
int spk_load(const char *path, char **err);
const char *spk_version(void);
int spk_has(const char *symbol);
int spk_is_initialized(void);
int spk_init(int minor, const char *home, const char *program, char **err);

// Interpreters and thread states.
PyThreadState *spk_new_main_tstate(void);
PyThreadState *spk_new_interp(int minor, int own_gil, char **err);
void spk_end_interp(int minor, PyThreadState *ts);
PyThreadState *spk_new_tstate(PyThreadState *home);
void spk_delete_tstate(PyThreadState *ts);
int64_t spk_interp_id(PyThreadState *ts);

// Operations; each takes the GIL with ts on the calling thread and releases
// it before returning.
void spk_exec(PyThreadState *ts, const char *code, int eval, char *buf, Py_ssize_t cap, spk_result *r);
PyObject *spk_lookup(PyThreadState *ts, const char *module, const char *attr, spk_result *r);
void spk_call(PyThreadState *ts, PyObject *fn, const char *args, Py_ssize_t alen,
              const char *kwargs, Py_ssize_t klen, char *buf, Py_ssize_t cap, spk_result *r);
void spk_decref(PyThreadState *ts, PyObject **objs, int n);

// ---- cached per-thread thread states ----
//
// An spk_interp tracks the thread states that calling threads created for
// one interpreter. Each calling OS thread keeps its own in thread-local
// storage and creates them on first use. CPython binds each OS thread to one
// thread state (the one PyGILState_Ensure uses): that one only its own
// thread may delete, as deleting it from another live thread would leave a
// dangling pointer behind; the others any thread may delete (spk_reap).
typedef struct spk_interp spk_interp;

// spk_buf is a span of host memory handed to Python without a copy.
typedef struct {
	char *ptr;
	Py_ssize_t len;
} spk_buf;

spk_interp *spk_interp_new(PyThreadState *home);
void spk_interp_free(spk_interp *in);
// spk_fcall calls fn on the calling thread with its cached thread state for
// in (created on first use), tagging the call with seq for spk_interrupt.
// bufs (nbufs of them) are the call's out-of-band payloads: the last item of
// the args tuple is replaced by a tuple of read-only memoryviews of them
// (bytes copies on 3.11). retained[i] is set where a view outlived the call:
// that memory must stay valid until the interpreter ends.
void spk_fcall(spk_interp *in, uint64_t seq, PyObject *fn, const char *args, Py_ssize_t alen,
               const char *kwargs, Py_ssize_t klen, const spk_buf *bufs, int nbufs, unsigned char *retained,
               char *buf, Py_ssize_t cap, spk_result *r);
// spk_release_held releases the Python buffer spk_fcall left in r->held
// (a large bytes-like result, which r->out points into, out_len bytes with
// no marshal header, for the caller to copy without the GIL). It must run
// on the thread that called spk_fcall, before that thread calls again.
void spk_release_held(spk_result *r);
// spk_interrupt (on the home thread) raises exc in the thread running call
// seq, if it still runs. Returns 1 if it did. Blocks while C code holds the
// interpreter's GIL.
int spk_interrupt(spk_interp *in, uint64_t seq, PyObject *exc);
// spk_interp_close marks in closing: calls fail, and every thread deletes
// its thread state for in the next time it calls into the shim.
void spk_interp_close(spk_interp *in);
// spk_interp_pending returns how many thread states of in remain, and up to
// max of their owning threads' ids.
int spk_interp_pending(spk_interp *in, pid_t *tids, int max);
// spk_reap deletes, from a new thread of its own, the thread states of in
// that their threads neither use nor are bound to, and those of the threads
// listed in dead, which have exited. It waits for in's GIL. Returns how many
// it deleted, or -1 if it could not start a thread.
int spk_reap(spk_interp *in, const pid_t *dead, int ndead);
// spk_sweep_thread deletes the calling thread's thread states of closing
// interpreters.
void spk_sweep_thread(void);
// spk_release_thread leaves the calling thread with no thread state only it
// could delete, for a thread about to be locked to one goroutine for good
// (a home thread, an attached Thread): no probe could reach it any more.
// A thread that exits deletes its thread states itself.
void spk_release_thread(void);
// spk_anchor_init creates, on 3.12+, the interpreter whose thread states
// spk_release_thread activates to move a thread's binding: one with its own
// GIL that runs no code. Called once, after spk_init.
int spk_anchor_init(char **err);

// spk_interp_tag_calls makes spk_fcall set attribute name of obj to the
// call's seq (an int) before each call, with the GIL: Python code can then
// tell which call it runs in. Call it before any call; obj and name stay
// owned by the caller, who keeps them alive while in is used.
void spk_interp_tag_calls(spk_interp *in, PyObject *obj, PyObject *name);

// ---- host calls: Python calls Go ----
//
// spk_install_host sets module.host_call (module already imported) to a
// builtin host_call(token, name, payload) -> bytes that calls the Go
// function spkHostCall on the calling thread, with the GIL released.
// handle names the interpreter's Go side.
int spk_install_host(PyThreadState *ts, const char *module, uintptr_t handle, spk_result *r);

// SPK_HOST_BUF_MIN is the size from which a bytes-like value crosses a
// host call out of band: an argument as the Python object's own memory
// (a held buffer export), a result as a bytes object Go fills directly.
#define SPK_HOST_BUF_MIN (64 << 10)

// spk_hostreply is where Go puts a host call's reply: in buf when it fits
// (cap bytes), else in malloc'd memory (heap set); out and len say where.
// On failure out is a NUL-terminated message.
//
// When bufs_ok is set, Go may also return out-of-band buffers, which
// markers in out name by index: spk_host_result_bufs makes them, as bytes
// objects (objs, nobjs) that Go fills. markers says out may hold markers
// (out-of-band or array ones) for the caller to resolve.
typedef struct {
	char *buf;
	Py_ssize_t cap;
	char *out;
	Py_ssize_t len;
	int heap;
	PyThreadState *ts; // the calling Python thread's, its GIL released
	int bufs_ok;
	int markers;
	int nobjs;
	PyObject **objs; // malloc'd: nobjs objects, then their nobjs data pointers
	void *args;      // the call's held argument exports (the builtin's), nargs of them
	int nargs;
} spk_hostreply;

// spk_host_result_bufs makes n bytes objects of lens[i] bytes for rep,
// taking the GIL with rep->ts for it (the caller does not hold it), and
// returns their data pointers (rep's, valid while rep holds the objects),
// for the caller to fill before the host call returns to Python. Where
// same[i] >= 0 the buffer is all of argument buffer same[i]: if that
// argument is a bytes object (immutable), the object itself is the reply's
// buffer and its pointer is NULL (nothing to fill). NULL: out of memory,
// nothing made.
char **spk_host_result_bufs(spk_hostreply *rep, const Py_ssize_t *lens, const int *same, int n);

// spk_intern returns a new reference to the interned str s.
PyObject *spk_intern(PyThreadState *ts, const char *s, spk_result *r);

enum { SPK_ECLOSED = 4 };

// SPK_EBADARGS: the arguments are not of the shape a call takes; emsg says why.
enum { SPK_EBADARGS = 5 };
void spk_result_free(spk_result *r);

#endif
