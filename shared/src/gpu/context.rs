//! The device, and the one place that differs between the browser and native: how to wait.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use super::GpuError;

/// An adapter, its device and queue, plus what the device reported asynchronously.
pub struct GpuContext {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    lost: Arc<Mutex<Option<String>>>,
    uncaptured: Arc<Mutex<Uncaptured>>,
}

/// Errors the device raised outside any error scope, until [`GpuContext::check`] reads them.
#[derive(Default)]
struct Uncaptured {
    first: Option<GpuError>,
    more: usize,
}

impl GpuContext {
    pub async fn new() -> Result<GpuContext, GpuError> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                ..Default::default()
            })
            .await
            .map_err(|e| {
                if cfg!(target_arch = "wasm32") && e.to_string().contains("navigator.gpu") {
                    GpuError::NoWebGpu
                } else {
                    GpuError::NoAdapter(e.to_string())
                }
            })?;
        let info = adapter.get_info();
        // The adapter's own limits, so large buffers work wherever the hardware allows them.
        let limits = adapter.limits();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("webfl"),
                required_limits: limits.clone(),
                ..Default::default()
            })
            .await
            .map_err(|e| GpuError::RequestDevice(e.to_string()))?;
        let lost = Arc::new(Mutex::new(None));
        let flag = lost.clone();
        device.set_device_lost_callback(move |reason, msg| {
            if let Ok(mut l) = flag.lock() {
                *l = Some(format!("{reason:?}: {msg}"));
            }
        });
        // Without a handler wgpu panics on errors outside an error scope; keep the first one
        // (later ones are usually its consequences) for `check` to report.
        let uncaptured = Arc::new(Mutex::new(Uncaptured::default()));
        let sink = uncaptured.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let e = match e {
                wgpu::Error::OutOfMemory { source } => GpuError::OutOfMemory(source.to_string()),
                wgpu::Error::Validation { description, .. } => GpuError::Validation(description),
                wgpu::Error::Internal { description, .. } => GpuError::Internal(description),
            };
            if let Ok(mut u) = sink.lock() {
                match u.first {
                    None => u.first = Some(e),
                    Some(_) => u.more += 1,
                }
            }
        }));
        Ok(GpuContext { device, queue, info, limits, lost, uncaptured })
    }

    /// Blocks on [`GpuContext::new`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new_blocking() -> Result<GpuContext, GpuError> {
        super::block_on(Self::new())
    }

    /// E.g. "llvmpipe (LLVM 15.0.6, 256 bits) · vulkan · cpu".
    pub fn describe(&self) -> String {
        let kind = match self.info.device_type {
            wgpu::DeviceType::DiscreteGpu => "discrete gpu",
            wgpu::DeviceType::IntegratedGpu => "integrated gpu",
            wgpu::DeviceType::VirtualGpu => "virtual gpu",
            wgpu::DeviceType::Cpu => "cpu",
            wgpu::DeviceType::Other => "other",
        };
        let backend = self.info.backend.to_string().to_lowercase();
        // Browsers may hide the adapter's name (wgpu maps only GPUAdapterInfo.description); the
        // device type still tells a software fallback such as Chromium's SwiftShader.
        let name = match (self.info.name.is_empty(), self.info.device_type) {
            (false, _) => self.info.name.as_str(),
            (true, wgpu::DeviceType::Cpu) => "software fallback adapter",
            (true, _) => "unnamed adapter",
        };
        format!("{name} · {backend} · {kind}")
    }

    /// A CPU implementation (SwiftShader, lavapipe): correct but rarely faster than the CPU engine.
    pub fn is_software(&self) -> bool {
        let name = self.info.name.to_lowercase();
        self.info.device_type == wgpu::DeviceType::Cpu
            || ["swiftshader", "llvmpipe", "lavapipe", "software"].iter().any(|s| name.contains(s))
    }

    /// Why the device was lost, if it was.
    pub fn lost_reason(&self) -> Option<String> {
        self.lost.lock().ok().and_then(|l| l.clone())
    }

    pub(crate) fn check_lost(&self) -> Result<(), GpuError> {
        match self.lost_reason() {
            Some(reason) => Err(GpuError::DeviceLost(reason)),
            None => Ok(()),
        }
    }

    /// Fails if the device was lost, or with the first error it raised outside any error scope
    /// since the last check (those reach a handler, not the call that caused them), forgetting
    /// them: work that finishes calls this so such errors fail it instead of vanishing.
    pub(crate) fn check(&self) -> Result<(), GpuError> {
        self.check_lost()?;
        let Ok(mut u) = self.uncaptured.lock() else { return Ok(()) };
        let more = std::mem::take(&mut u.more);
        let Some(first) = u.first.take() else { return Ok(()) };
        if more == 0 {
            return Err(first);
        }
        let note = |m: String| format!("{m} (and {more} more GPU errors outside any error scope)");
        Err(match first {
            GpuError::OutOfMemory(m) => GpuError::OutOfMemory(note(m)),
            GpuError::Validation(m) => GpuError::Validation(note(m)),
            GpuError::Internal(m) => GpuError::Internal(note(m)),
            other => other,
        })
    }

    /// Copies `size` bytes at `offset` of `src` (a COPY_SRC buffer) back to the host, after all
    /// previously submitted work.
    pub(crate) async fn read_bytes(&self, src: &wgpu::Buffer, offset: u64, size: u64) -> Result<Vec<u8>, GpuError> {
        self.check_lost()?;
        if size == 0 {
            return Ok(Vec::new());
        }
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self.device.create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(src, offset, &staging, 0, size);
        self.queue.submit([enc.finish()]);
        let (tx, rx) = oneshot();
        staging.map_async(wgpu::MapMode::Read, .., move |r| tx.send(r));
        let mapped = self.wait(rx).await?;
        mapped.map_err(|e| self.lost_or(GpuError::Validation(format!("mapping a readback buffer failed: {e}"))))?;
        let bytes = staging
            .get_mapped_range(..)
            .map_err(|e| GpuError::Validation(format!("reading a mapped buffer failed: {e}")))?
            .to_vec();
        staging.unmap();
        Ok(bytes)
    }

    pub(crate) async fn read_f32(&self, src: &wgpu::Buffer, offset: u64, len: usize) -> Result<Vec<f32>, GpuError> {
        let bytes = self.read_bytes(src, offset, (len * 4) as u64).await?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    /// Waits until all submitted work has finished.
    pub(crate) async fn finish(&self) -> Result<(), GpuError> {
        let (tx, rx) = oneshot();
        self.queue.on_submitted_work_done(move || tx.send(()));
        self.wait(rx).await
    }

    /// The platform seam. Natively: drive the device until the callback has run. In the browser:
    /// yield to the event loop until it does (no busy loop).
    async fn wait<T>(&self, rx: Receiver<T>) -> Result<T, GpuError> {
        #[cfg(not(target_arch = "wasm32"))]
        {
            self.device
                .poll(wgpu::PollType::wait_indefinitely())
                .map_err(|e| self.lost_or(GpuError::DeviceLost(e.to_string())))?;
            rx.try_take().ok_or_else(|| self.lost_or(GpuError::DeviceLost("the device stopped responding".into())))
        }
        #[cfg(target_arch = "wasm32")]
        {
            Ok(rx.await)
        }
    }

    fn lost_or(&self, other: GpuError) -> GpuError {
        match self.lost_reason() {
            Some(reason) => GpuError::DeviceLost(reason),
            None => other,
        }
    }
}

/// A one-value channel from a wgpu callback to an async waiter.
struct Slot<T> {
    value: Option<T>,
    waker: Option<Waker>,
}

struct Sender<T>(Arc<Mutex<Slot<T>>>);
struct Receiver<T>(Arc<Mutex<Slot<T>>>);

fn oneshot<T>() -> (Sender<T>, Receiver<T>) {
    let s = Arc::new(Mutex::new(Slot { value: None, waker: None }));
    (Sender(s.clone()), Receiver(s))
}

impl<T> Sender<T> {
    fn send(self, v: T) {
        if let Ok(mut s) = self.0.lock() {
            s.value = Some(v);
            if let Some(w) = s.waker.take() {
                w.wake();
            }
        }
    }
}

impl<T> Receiver<T> {
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    fn try_take(&self) -> Option<T> {
        self.0.lock().ok().and_then(|mut s| s.value.take())
    }
}

impl<T> Future for Receiver<T> {
    type Output = T;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let Ok(mut s) = self.0.lock() else { return Poll::Pending };
        match s.value.take() {
            Some(v) => Poll::Ready(v),
            None => {
                s.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}
