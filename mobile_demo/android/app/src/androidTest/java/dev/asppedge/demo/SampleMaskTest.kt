package dev.asppedge.demo

import android.graphics.Bitmap
import android.graphics.BitmapFactory
import android.graphics.Color
import androidx.test.ext.junit.runners.AndroidJUnit4
import androidx.test.platform.app.InstrumentationRegistry
import org.junit.Assert.assertEquals
import org.junit.Assert.assertNotEquals
import org.junit.Assert.assertTrue
import org.junit.Test
import org.junit.runner.RunWith
import java.io.File

/**
 * The bundled sample through each bundled artifact on the phone, against the mask the host demo
 * (`aspp-edge demo`, via `--for-apps`) predicted for the same artifact: pixel agreement >= 0.99
 * (phone kernels round differently from the host's; CONTRACT.md). Every test needs the assets that
 * `--for-apps` writes and fails without them, naming the command (nothing passes having checked nothing).
 */
@RunWith(AndroidJUnit4::class)
class SampleMaskTest {
    private val context = InstrumentationRegistry.getInstrumentation().targetContext

    /** Fails, with the command that installs the assets, unless `backend` is bundled. */
    private fun requireBundled(backend: String) {
        val installed = Assets.installed(context)
        val what = if (installed.isEmpty()) "no models are bundled (app/src/main/assets has no ${Assets.INDEX})"
        else "${Assets.INDEX} lists ${installed.sorted()}, not $backend"
        assertTrue("$what; install them ${Assets.INSTALL}", backend in installed)
    }

    private fun bitmap(name: String): Bitmap {
        val options = BitmapFactory.Options().apply { inScaled = false; inPreferredConfig = Bitmap.Config.ARGB_8888 }
        return context.assets.open(name).use { BitmapFactory.decodeStream(it, null, options)!! }
    }

    private fun expectedMask(name: String): ByteArray {
        val png = bitmap(name)
        val pixels = IntArray(png.width * png.height)
        png.getPixels(pixels, 0, png.width, 0, 0, png.width, png.height)
        return ByteArray(pixels.size) { Color.red(pixels[it]).toByte() } // greyscale PNG: class index in every channel
    }

    private fun check(segmenter: Segmenter, expectedName: String) {
        val sample = bitmap(Assets.SAMPLE)
        assertEquals(segmenter.manifest.width, sample.width)
        assertEquals(segmenter.manifest.height, sample.height)
        val result = segmenter.segment(sample)
        val expected = expectedMask(expectedName)
        val agreement = Contract.agreement(result.mask, expected)
        assertTrue("${segmenter.runtimeName}: agreement $agreement with the host demo's mask < 0.99", agreement >= 0.99)
        assertTrue("a constant mask is not a segmentation", result.mask.toSet().size >= 2)
    }

    @Test
    fun executorchMatchesHostDemo() {
        requireBundled("executorch")
        ExecuTorchSegmenter(context).use { check(it, Assets.PTE_EXPECTED_MASK) }
    }

    @Test
    fun litertMatchesHostDemo() {
        requireBundled("tflite")
        LiteRtSegmenter(context).use { check(it, Assets.TFLITE_EXPECTED_MASK) }
    }

    @Test
    fun manifestsFollowTheContract() {
        val manifests = mapOf("executorch" to Assets.PTE_MANIFEST, "tflite" to Assets.TFLITE_MANIFEST)
        for ((backend, name) in manifests) {
            requireBundled(backend)
            val m = ArtifactManifest.parse(Assets.text(context, name))
            assertEquals(m.labels.size, m.classes)
            assertEquals(m.colors.size, m.labels.size)
            assertTrue("sha256 of $name: ${m.sha256}", Regex("[0-9a-f]{64}").matches(m.sha256))
        }
    }

    /** A copy left by an older install (other bytes) is replaced by the bundled model, not run. */
    @Test
    fun aStaleModelCopyIsReplaced() {
        requireBundled("executorch")
        val m = ArtifactManifest.parse(Assets.text(context, Assets.PTE_MANIFEST))
        val stale = File(context.filesDir, Assets.PTE).apply { writeBytes(byteArrayOf(1, 2, 3)) }
        assertNotEquals(m.sha256, Assets.sha256(stale))
        val copy = Assets.modelFile(context, Assets.PTE, m.sha256)
        assertEquals(m.sha256, Assets.sha256(copy))
    }
}
