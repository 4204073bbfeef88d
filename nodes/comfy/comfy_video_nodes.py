"""ComfyUI's video nodes: LoadVideo, GetVideoComponents, CreateVideo, SaveVideo, SaveAnimatedWEBP.

Files are written atomically under the output folder as `<prefix>_00001.<ext>` (the counter one
past the highest in use). ComfyUI also embeds the prompt and workflow in the file's metadata;
the engine does not hand those to nodes, so nothing is embedded.
"""
from __future__ import annotations

from graphrt import Input, Node, Output, register_node

from .comfy_files import INPUT_FOLDER, VIDEO_EXTENSIONS, FileInputNode, file_input, resolve

_PREFIX_TIP = ("The prefix for the file to save; it may name a subfolder of the output folder "
               "(ComfyUI's %date:...% / %Node.widget% formatting is not expanded).")


@register_node
class LoadVideo(FileInputNode):
    CATEGORY = "image/video"
    DESCRIPTION = "Loads a video file of the input folder (or a path) as a VIDEO: its frames and frame rate."
    FOLDER_INPUTS = {"file": INPUT_FOLDER}
    INPUT_EXTENSIONS = VIDEO_EXTENSIONS
    INPUTS = [file_input("file", INPUT_FOLDER)]
    OUTPUTS = [Output("VIDEO", "VIDEO")]

    def execute(self, ctx, file):
        from ..wan.video_clip import VideoClip
        return (VideoClip.from_file(resolve(INPUT_FOLDER, file)),)


@register_node
class GetVideoComponents(Node):
    CATEGORY = "image/video"
    DESCRIPTION = "Extracts all components from a video: frames, audio, and framerate."
    INPUTS = [Input("video", "VIDEO", tooltip="The video to extract components from.")]
    OUTPUTS = [Output("images", "IMAGE"), Output("audio", "AUDIO"), Output("fps", "FLOAT")]

    def execute(self, ctx, video):
        return video.frames, video.audio, float(video.fps)


@register_node
class CreateVideo(Node):
    CATEGORY = "image/video"
    DESCRIPTION = "Create a video from images."
    INPUTS = [Input("images", "IMAGE", tooltip="The images to create a video from."),
              Input("fps", "FLOAT", default=30.0, min=1.0, max=120.0, step=1.0),
              Input("audio", "AUDIO", optional=True, tooltip="The audio to add to the video.")]
    OUTPUTS = [Output("VIDEO", "VIDEO")]

    def execute(self, ctx, images, fps=30.0, audio=None):
        from ..wan.video_clip import VideoClip
        return (VideoClip(images, fps, audio),)


@register_node
class SaveVideo(Node):
    CATEGORY = "image/video"
    DESCRIPTION = "Saves the video as an H.264 (yuv420p) MP4 in the output folder."
    INPUTS = [Input("video", "VIDEO", tooltip="The video to save."),
              Input("filename_prefix", "STRING", default="video/ComfyUI", tooltip=_PREFIX_TIP),
              Input("format", ["auto", "mp4"], default="auto", tooltip="The format to save the video as."),
              Input("codec", ["auto", "h264"], default="auto", tooltip="The codec to use for the video.")]
    OUTPUTS = []
    OUTPUT_NODE = True

    def execute(self, ctx, video, filename_prefix="video/ComfyUI", format="auto", codec="auto"):
        from ..wan import media
        if video.audio is not None:
            ctx.log("SaveVideo: the audio track is not written (video only)")
        path = video.save_mp4(media.next_path(ctx.output_dir, filename_prefix, "mp4"))
        ctx.ui(files=[str(path)])
        return ()


@register_node
class SaveAnimatedWEBP(Node):
    CATEGORY = "image/animation"
    DESCRIPTION = "Saves the frames as an animated WebP in the output folder."
    INPUTS = [Input("images", "IMAGE"),
              Input("filename_prefix", "STRING", default="ComfyUI", tooltip=_PREFIX_TIP),
              Input("fps", "FLOAT", default=6.0, min=0.01, max=1000.0, step=0.01),
              Input("lossless", "BOOLEAN", default=True),
              Input("quality", "INT", default=80, min=0, max=100),
              Input("method", ["default", "fastest", "slowest"])]
    OUTPUTS = []
    OUTPUT_NODE = True

    def execute(self, ctx, images, filename_prefix="ComfyUI", fps=6.0, lossless=True, quality=80, method="default"):
        import numpy as np
        from ..wan import media
        from ..wan.comfy_media import save_animated_webp
        path = save_animated_webp(np.asarray(images, np.float32), media.next_path(ctx.output_dir, filename_prefix,
                                                                                  "webp"),
                                  fps, lossless, quality, method)
        ctx.ui(files=[str(path)])
        return ()
