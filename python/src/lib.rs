//! `pai_mount._native`: the loader and the object streams, for the `pai_mount` Python package.
//!
//! Only plain data crosses: configuration in, samples (a pointer, a length and an owner that
//! keeps the bytes alive) and integers out. The Python side builds its classes on top
//! (`pai_mount/*.py`). Rules kept here:
//! - the GIL is released around every wait on I/O (`Python::detach`);
//! - nothing from another process is used: datasets rebuild their runtime after `fork()`
//!   (`for_this_process`), and the object-stream runtime is per process id;
//! - errors become the exception classes of `pai_mount._errors`, chosen by
//!   [`pai_loader::ErrorKind`] with an exhaustive match.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use pai_loader::object_io::{self, ObjectReader, ObjectWriter, ReadOptions, WriteOptions};
use pai_loader::{
    Dataset, DatasetOptions, ErrorKind, Layout, LoadError, LoadOptions, Loader, Order, Shuffle,
};
use pai_store::manifest::{self, BuildOptions, BuildProgress};
use pai_store::metrics::Metrics;
use pai_store::object::credentials::{CredentialFlags, ProcessEnv};
use pai_store::object::{ObjectSource, Source, StoreOptions};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

/// The Python exception for `e`, from `pai_mount._errors`, with `url` and `key` attributes.
fn to_py(e: LoadError) -> PyErr {
    Python::attach(|py| {
        let name = match e.kind() {
            ErrorKind::Invalid => "InvalidArgumentError",
            ErrorKind::Credentials => "CredentialsError",
            ErrorKind::NotFound => "NotFoundError",
            ErrorKind::Changed => "ObjectChangedError",
            ErrorKind::Corrupt => "CorruptError",
            ErrorKind::OutOfRange => "OutOfRangeError",
            ErrorKind::Unavailable => "UnavailableError",
        };
        let url = match &e {
            LoadError::Credentials { url, .. }
            | LoadError::NotFound { url, .. }
            | LoadError::Changed { url, .. }
            | LoadError::Corrupt { url, .. }
            | LoadError::Unavailable { url, .. } => Some(url.clone()),
            LoadError::Invalid { .. } | LoadError::OutOfRange { .. } => None,
        };
        let key = e.key().map(str::to_string);
        let build = || -> PyResult<PyErr> {
            let cls = py.import("pai_mount._errors")?.getattr(name)?;
            let value = cls.call1((e.to_string(),))?;
            value.setattr("url", url.clone())?;
            value.setattr("key", key.clone())?;
            Ok(PyErr::from_value(value))
        };
        build().unwrap_or_else(|err| err)
    })
}

/// Store options from the keywords the CLI's flags are named after.
fn store_options(store: Option<&Bound<'_, PyDict>>) -> PyResult<StoreOptions> {
    let mut o = StoreOptions::default();
    let Some(d) = store else { return Ok(o) };
    let mut creds = CredentialFlags::default();
    for (k, v) in d.iter() {
        let k: String = k.extract()?;
        if v.is_none() {
            continue;
        }
        match k.as_str() {
            "region" => o.region = Some(v.extract()?),
            "endpoint" => o.endpoint = Some(v.extract()?),
            "path_style" => o.path_style = v.extract()?,
            "internal" => o.internal = v.extract()?,
            "anonymous" => o.anonymous = v.extract()?,
            "access_key_id" => creds.access_key_id = Some(v.extract()?),
            "secret_access_key" => creds.secret_access_key = Some(v.extract()?),
            "session_token" => creds.session_token = Some(v.extract()?),
            "connect_timeout" => o.deadlines.connect = seconds(&k, v.extract()?)?,
            "first_byte_timeout" => o.deadlines.first_byte = seconds(&k, v.extract()?)?,
            "idle_timeout" => o.deadlines.idle = seconds(&k, v.extract()?)?,
            "max_concurrency" => {
                let n: usize = v.extract()?;
                if n == 0 {
                    return Err(to_py(LoadError::Invalid {
                        why: "max_concurrency must be at least 1".into(),
                    }));
                }
                o.max_concurrency = Some(n);
            }
            other => {
                return Err(PyTypeError::new_err(format!(
                    "unknown store option {other:?}; expected region, endpoint, path_style, internal, anonymous, access_key_id, secret_access_key, session_token, connect_timeout, first_byte_timeout, idle_timeout or max_concurrency"
                )))
            }
        }
    }
    o.credentials = creds;
    Ok(o)
}

/// A timeout given in seconds (a float): more than 0 and finite.
fn seconds(name: &str, s: f64) -> PyResult<std::time::Duration> {
    if !(s.is_finite() && s > 0.0) {
        return Err(to_py(LoadError::Invalid {
            why: format!("{name} must be a number of seconds more than 0, not {s}"),
        }));
    }
    Ok(std::time::Duration::from_secs_f64(s))
}

fn shuffle_of(shuffle: &str, block_size: Option<u64>) -> PyResult<Shuffle> {
    let invalid = |why: String| to_py(LoadError::Invalid { why });
    match (shuffle, block_size) {
        ("none", _) => Ok(Shuffle::None),
        ("global", _) => Ok(Shuffle::Global),
        ("block", Some(b)) if b > 0 => Ok(Shuffle::Block { block: b }),
        ("block", _) => Err(invalid(
            "shuffle=\"block\" needs block_size=N (samples per block, for example per shard), N > 0".into(),
        )),
        (other, _) => Err(invalid(format!(
            "unknown shuffle {other:?}; expected \"global\", \"block\" or \"none\""
        ))),
    }
}

/// The metrics of every dataset, stream and copy this process opened (weak references: a dropped
/// one's go away), for [`serve_metrics`]. A forked child starts with none of its parent's.
fn tracked() -> std::sync::MutexGuard<'static, (u32, Vec<std::sync::Weak<Metrics>>)> {
    static TRACKED: Mutex<(u32, Vec<std::sync::Weak<Metrics>>)> = Mutex::new((0, Vec::new()));
    let mut guard = TRACKED.lock().unwrap_or_else(|p| p.into_inner());
    let pid = std::process::id();
    if guard.0 != pid {
        *guard = (pid, Vec::new());
    }
    guard
}

fn track(metrics: &Arc<Metrics>) {
    let mut t = tracked();
    t.1.retain(|w| w.strong_count() > 0);
    t.1.push(Arc::downgrade(metrics));
}

/// Serves this process's metrics (every dataset, stream and copy it opened, summed) at
/// `http://ADDR/metrics` for Prometheus. Returns that URL. Call it once per process: in a
/// DataLoader worker, from `worker_init_fn` with a port of its own.
#[pyfunction]
fn serve_metrics(addr: &str) -> PyResult<String> {
    let addr: std::net::SocketAddr = addr.parse().map_err(|e| {
        to_py(LoadError::Invalid {
            why: format!("{addr:?} is not an address like 127.0.0.1:9464: {e}"),
        })
    })?;
    let rt = runtime()?;
    let all = || {
        tracked()
            .1
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .collect::<Vec<_>>()
    };
    let pid = std::process::id().to_string();
    let registry = pai_exporter::registry(
        pai_exporter::Source::Many(Box::new(all)),
        Box::new(|| None),
        &[("command", "loader"), ("pid", &pid)],
    );
    let bound = pai_exporter::start(rt, addr, registry).map_err(|e| {
        to_py(LoadError::Unavailable {
            url: String::new(),
            key: None,
            why: e.to_string(),
        })
    })?;
    Ok(format!("http://{bound}/metrics"))
}

/// The runtime of this process for object streams and manifest builds (a forked child makes
/// its own and never touches its parent's).
fn runtime() -> PyResult<&'static tokio::runtime::Runtime> {
    static RT: Mutex<Option<(u32, &'static tokio::runtime::Runtime)>> = Mutex::new(None);
    let pid = std::process::id();
    let mut guard = RT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((p, rt)) = *guard {
        if p == pid {
            return Ok(rt);
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("pai-mount-io")
        .enable_all()
        .build()
        .map_err(|e| {
            to_py(LoadError::Unavailable {
                url: String::new(),
                key: None,
                why: format!("starting a runtime: {e}"),
            })
        })?;
    // Lives as long as the process (a child's copy of a parent's is simply not used).
    let rt: &'static tokio::runtime::Runtime = Box::leak(Box::new(rt));
    *guard = Some((pid, rt));
    Ok(rt)
}

fn connect(
    rt: &tokio::runtime::Runtime,
    source: Source,
    url: &str,
    options: &StoreOptions,
) -> Result<ObjectSource, LoadError> {
    let metrics = Arc::new(Metrics::default());
    track(&metrics);
    rt.block_on(ObjectSource::connect(source, options, &ProcessEnv, metrics))
        .map_err(|e| LoadError::from_source(url, e))
}

/// A dataset: the samples under a prefix, from its manifest.
#[pyclass(module = "pai_mount._native", name = "Dataset", frozen)]
struct PyDataset {
    inner: Arc<Dataset>,
}

#[pymethods]
impl PyDataset {
    #[new]
    #[pyo3(signature = (url, store=None, glob=None, suffixes=Vec::new(), tar=false))]
    fn new(
        py: Python<'_>,
        url: String,
        store: Option<&Bound<'_, PyDict>>,
        glob: Option<String>,
        suffixes: Vec<String>,
        tar: bool,
    ) -> PyResult<Self> {
        let options = DatasetOptions {
            store: store_options(store)?,
            suffixes,
            glob,
            tar_shards: tar,
        };
        let ds = py.detach(|| Dataset::open(&url, options)).map_err(to_py)?;
        track(ds.metrics());
        Ok(Self {
            inner: Arc::new(ds),
        })
    }

    /// The same dataset for a forked child: shares the sample table, builds its own
    /// connections, never touches the parent's.
    fn for_this_process(&self) -> Self {
        let ds = self.inner.for_this_process();
        track(ds.metrics());
        Self {
            inner: Arc::new(ds),
        }
    }

    fn __len__(&self) -> usize {
        self.inner.len() as usize
    }

    #[getter]
    fn url(&self) -> &str {
        self.inner.url()
    }

    fn key(&self, index: u64) -> Option<String> {
        self.inner.key(index)
    }

    fn get(&self, py: Python<'_>, index: u64) -> PyResult<PySample> {
        let ds = self.inner.clone();
        let s = py.detach(move || ds.get(index)).map_err(to_py)?;
        Ok(PySample::from(s))
    }

    /// Samples each rank reads per epoch.
    fn per_rank(&self, world_size: u64, drop_last: bool) -> u64 {
        let layout = Layout {
            world_size: world_size.max(1),
            rank: 0,
            workers: 1,
            worker: 0,
        };
        let order = Order {
            drop_last,
            ..Order::default()
        };
        pai_loader::Sampler::new(self.inner.len(), layout, order).per_rank()
    }

    /// Counters of this process's requests.
    fn metrics<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let m = self.inner.metrics();
        let d = PyDict::new(py);
        d.set_item("get_requests", m.get_requests.load(Relaxed))?;
        d.set_item("get_bytes", m.get_bytes.load(Relaxed))?;
        d.set_item("get_errors", m.get_errors.load(Relaxed))?;
        d.set_item("list_requests", m.list_requests.load(Relaxed))?;
        Ok(d)
    }

    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (*, world_size, rank, workers, worker, seed, shuffle, block_size, drop_last, interleave, epoch, base, position, in_flight, max_bytes))]
    fn loader(
        &self,
        py: Python<'_>,
        world_size: u64,
        rank: u64,
        workers: u64,
        worker: u64,
        seed: u64,
        shuffle: &str,
        block_size: Option<u64>,
        drop_last: bool,
        interleave: u64,
        epoch: u64,
        base: u64,
        position: u64,
        in_flight: usize,
        max_bytes: u64,
    ) -> PyResult<PyLoader> {
        let layout = Layout {
            world_size,
            rank,
            workers,
            worker,
        };
        let order = Order {
            seed,
            shuffle: shuffle_of(shuffle, block_size)?,
            drop_last,
            interleave: interleave.max(1),
        };
        let options = LoadOptions {
            in_flight,
            max_bytes,
            ..LoadOptions::default()
        };
        let ds = self.inner.clone();
        let loader = py
            .detach(move || Loader::at_position(&ds, layout, order, epoch, base, position, options))
            .map_err(to_py)?;
        Ok(PyLoader {
            inner: Some(loader),
        })
    }
}

/// One sample: bytes owned by Rust, exposed by address to a zero-copy view on the Python side.
#[pyclass(module = "pai_mount._native", name = "Sample", frozen)]
struct PySample {
    #[pyo3(get)]
    index: u64,
    #[pyo3(get)]
    key: String,
    data: Bytes,
    members: Vec<(String, usize, usize)>,
}

impl From<pai_loader::Sample> for PySample {
    fn from(s: pai_loader::Sample) -> Self {
        Self {
            index: s.index,
            key: s.key,
            members: s
                .members
                .into_iter()
                .map(|(e, r)| (e, r.start, r.end))
                .collect(),
            data: s.data,
        }
    }
}

#[pymethods]
impl PySample {
    /// Where the bytes are. They stay valid, unchanged, while this object lives.
    #[getter]
    fn address(&self) -> usize {
        self.data.as_ptr() as usize
    }

    #[getter]
    fn size(&self) -> usize {
        self.data.len()
    }

    /// Tar members: (extension, start, end) within the data.
    #[getter]
    fn members(&self) -> Vec<(String, usize, usize)> {
        self.members.clone()
    }

    /// A copy as `bytes`.
    fn to_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.data)
    }
}

/// The samples of one worker for one epoch, in order.
#[pyclass(module = "pai_mount._native", name = "Loader")]
struct PyLoader {
    inner: Option<Loader>,
}

#[pymethods]
impl PyLoader {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&mut self, py: Python<'_>) -> PyResult<Option<PySample>> {
        let Some(loader) = self.inner.as_mut() else {
            return Ok(None);
        };
        match py.detach(|| loader.next()) {
            Some(Ok(s)) => Ok(Some(PySample::from(s))),
            Some(Err(e)) => Err(to_py(e)),
            None => Ok(None),
        }
    }

    /// The next position in this worker's stream (a worker-level resume point).
    #[getter]
    fn position(&self) -> u64 {
        self.inner.as_ref().map_or(0, Loader::position)
    }

    /// Samples this worker yields in the epoch, from its start.
    fn __len__(&self) -> usize {
        self.inner.as_ref().map_or(0, |l| l.len() as usize)
    }

    /// Stops reading ahead and lets go of buffered samples.
    fn close(&mut self) {
        self.inner = None;
    }
}

/// A seekable reader of one object (`pai_mount.open(url, "rb")`).
#[pyclass(module = "pai_mount._native", name = "ObjectReader")]
struct PyObjectReader {
    inner: Option<ObjectReader>,
    url: String,
}

impl PyObjectReader {
    fn get(&mut self) -> PyResult<&mut ObjectReader> {
        let url = &self.url;
        self.inner.as_mut().ok_or_else(|| {
            pyo3::exceptions::PyValueError::new_err(format!("I/O on closed object {url}"))
        })
    }
}

#[pymethods]
impl PyObjectReader {
    #[new]
    #[pyo3(signature = (url, store=None, chunk=None, ahead=None))]
    fn new(
        py: Python<'_>,
        url: String,
        store: Option<&Bound<'_, PyDict>>,
        chunk: Option<u64>,
        ahead: Option<usize>,
    ) -> PyResult<Self> {
        let options = store_options(store)?;
        let (source, key) = object_io::split_object_url(&url).map_err(to_py)?;
        let rt = runtime()?;
        let defaults = ReadOptions::default();
        let read = ReadOptions {
            chunk: chunk.unwrap_or(defaults.chunk),
            ahead: ahead.unwrap_or(defaults.ahead),
        };
        let u = url.clone();
        let reader = py
            .detach(move || {
                let source = connect(rt, source, &u, &options)?;
                rt.block_on(ObjectReader::open(source, &u, &key, read))
            })
            .map_err(to_py)?;
        Ok(Self {
            inner: Some(reader),
            url,
        })
    }

    #[getter]
    fn size(&mut self) -> PyResult<u64> {
        Ok(self.get()?.size())
    }

    #[getter]
    fn etag(&mut self) -> PyResult<Option<String>> {
        Ok(self.get()?.etag().map(str::to_string))
    }

    fn tell(&mut self) -> PyResult<u64> {
        Ok(self.get()?.position())
    }

    fn seek(&mut self, pos: u64) -> PyResult<u64> {
        let r = self.get()?;
        r.seek(pos);
        Ok(pos)
    }

    /// Up to `n` bytes (all that is left when `n` is negative); fewer only at the end.
    #[pyo3(signature = (n=-1))]
    fn read<'py>(&mut self, py: Python<'py>, n: i64) -> PyResult<Bound<'py, PyBytes>> {
        let rt = runtime()?;
        let r = self.get()?;
        let left = r.size().saturating_sub(r.position());
        let want = if n < 0 { left } else { (n as u64).min(left) };
        let mut out = Vec::with_capacity(want as usize);
        py.detach(|| rt.block_on(r.read_into(want, &mut out)))
            .map_err(to_py)?;
        Ok(PyBytes::new(py, &out))
    }

    fn close(&mut self) {
        self.inner = None;
    }
}

/// A streaming multipart upload of one object (`pai_mount.open(url, "wb")`).
#[pyclass(module = "pai_mount._native", name = "ObjectWriter", frozen)]
struct PyObjectWriter {
    inner: Mutex<Option<ObjectWriter>>,
    url: String,
}

impl PyObjectWriter {
    fn take(&self) -> Option<ObjectWriter> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

#[pymethods]
impl PyObjectWriter {
    #[new]
    #[pyo3(signature = (url, store=None, part_size=None, parts_in_flight=None))]
    fn new(
        py: Python<'_>,
        url: String,
        store: Option<&Bound<'_, PyDict>>,
        part_size: Option<usize>,
        parts_in_flight: Option<usize>,
    ) -> PyResult<Self> {
        let options = store_options(store)?;
        let (source, key) = object_io::split_object_url(&url).map_err(to_py)?;
        let rt = runtime()?;
        let defaults = WriteOptions::default();
        let write = WriteOptions {
            part_size: part_size.unwrap_or(defaults.part_size),
            parts_in_flight: parts_in_flight.unwrap_or(defaults.parts_in_flight),
        };
        let u = url.clone();
        let writer = py
            .detach(move || {
                let source = connect(rt, source, &u, &options)?;
                Ok::<_, LoadError>(ObjectWriter::new(source, &u, &key, write))
            })
            .map_err(to_py)?;
        Ok(Self {
            inner: Mutex::new(Some(writer)),
            url,
        })
    }

    fn write(&self, py: Python<'_>, data: &[u8]) -> PyResult<usize> {
        let rt = runtime()?;
        let n = data.len();
        let result = py.detach(|| {
            let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            let Some(w) = guard.as_mut() else {
                return Err(LoadError::Invalid {
                    why: format!("write to closed object {}", self.url),
                });
            };
            let _enter = rt.enter();
            rt.block_on(w.write(data))
        });
        if let Err(e) = result {
            // A failed part fails the object: nothing will become visible.
            if let Some(w) = self.take() {
                py.detach(|| rt.block_on(w.abort()));
            }
            return Err(to_py(e));
        }
        Ok(n)
    }

    #[getter]
    fn written(&self) -> u64 {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map_or(0, ObjectWriter::written)
    }

    /// Sends the rest and makes the object visible; returns its ETag.
    fn finish(&self, py: Python<'_>) -> PyResult<Option<String>> {
        let rt = runtime()?;
        let Some(w) = self.take() else {
            return Ok(None);
        };
        py.detach(|| {
            let _enter = rt.enter();
            rt.block_on(w.finish())
        })
        .map_err(to_py)
    }

    /// Abandons the upload: nothing becomes visible.
    fn abort(&self, py: Python<'_>) -> PyResult<()> {
        let rt = runtime()?;
        if let Some(w) = self.take() {
            py.detach(|| {
                let _enter = rt.enter();
                rt.block_on(w.abort())
            });
        }
        Ok(())
    }
}

/// Lists `url` and stores its manifest. Returns (objects, bytes, manifest size).
#[pyfunction]
#[pyo3(signature = (url, store=None))]
fn build_manifest(
    py: Python<'_>,
    url: String,
    store: Option<&Bound<'_, PyDict>>,
) -> PyResult<(u64, u64, usize)> {
    let options = store_options(store)?;
    let rt = runtime()?;
    py.detach(|| {
        let source = Source::parse(&url).map_err(|e| LoadError::from_source(&url, e))?;
        let source = connect(rt, source, &url, &options)?;
        let (header, len) = rt
            .block_on(manifest::build_and_store(
                &source,
                &BuildOptions::default(),
                &BuildProgress::default(),
            ))
            .map_err(|e| LoadError::from_source(&url, e))?;
        Ok::<_, LoadError>((header.object_count, header.total_bytes, len))
    })
    .map_err(to_py)
}

/// Indexes the tar shards under `url` and stores the index. Returns (shards, samples).
#[pyfunction]
#[pyo3(signature = (url, store=None, suffixes=Vec::new(), concurrency=16))]
fn build_tar_index(
    py: Python<'_>,
    url: String,
    store: Option<&Bound<'_, PyDict>>,
    suffixes: Vec<String>,
    concurrency: usize,
) -> PyResult<(usize, usize)> {
    let options = DatasetOptions {
        store: store_options(store)?,
        suffixes,
        glob: None,
        tar_shards: true,
    };
    py.detach(|| Dataset::build_tar_index(&url, &options, concurrency))
        .map_err(to_py)
}

/// Copies every object under `url` to the local directory `dest` (`pai-mount cp`). Returns
/// the exact counts.
#[pyfunction]
#[pyo3(signature = (url, dest, store=None, jobs=32, part_size=8 << 20, verify=true, fsync=false))]
#[allow(clippy::too_many_arguments)]
fn copy<'py>(
    py: Python<'py>,
    url: String,
    dest: std::path::PathBuf,
    store: Option<&Bound<'_, PyDict>>,
    jobs: usize,
    part_size: u64,
    verify: bool,
    fsync: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let options = store_options(store)?;
    let rt = runtime()?;
    let copy = pai_loader::copy::CopyOptions {
        jobs,
        part_size,
        verify,
        fsync,
    };
    let report = py
        .detach(|| {
            let source = Source::parse(&url).map_err(|e| LoadError::from_source(&url, e))?;
            let source = connect(rt, source, &url, &options)?;
            rt.block_on(pai_loader::copy::copy_prefix(
                &source,
                &url,
                &dest,
                &copy,
                &pai_loader::copy::NoProgress,
            ))
        })
        .map_err(to_py)?;
    let d = PyDict::new(py);
    d.set_item("objects", report.objects)?;
    d.set_item("copied", report.copied)?;
    d.set_item("skipped", report.skipped)?;
    d.set_item("failed", report.failed)?;
    d.set_item("not_started", report.not_started)?;
    d.set_item("unnamable_keys", report.unnamable_keys)?;
    d.set_item("bytes_fetched", report.bytes_fetched)?;
    d.set_item("seconds", report.seconds)?;
    d.set_item("errors", report.errors)?;
    Ok(d)
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<PyDataset>()?;
    m.add_class::<PySample>()?;
    m.add_class::<PyLoader>()?;
    m.add_class::<PyObjectReader>()?;
    m.add_class::<PyObjectWriter>()?;
    m.add_function(wrap_pyfunction!(build_manifest, m)?)?;
    m.add_function(wrap_pyfunction!(build_tar_index, m)?)?;
    m.add_function(wrap_pyfunction!(copy, m)?)?;
    m.add_function(wrap_pyfunction!(serve_metrics, m)?)?;
    Ok(())
}
